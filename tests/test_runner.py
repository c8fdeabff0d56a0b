"""The run driver, the progress display, the example-weighted metrics and the
atomic writer, on small fakes (no network)."""

import io
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tfnas.files import atomic_write, atomic_write_json, to_json
from tfnas.metrics import MeanMetrics, batch_sums
from tfnas.progress import Progress
from tfnas.rundir import CheckpointError, RunDir
from tfnas.runner import DivergedError, RunDriver, open_run


class CountingTask:
    """Adds ``step`` to a variable each epoch; its loss is the variable."""

    tensorboard_name = ""

    def __init__(self, step=1.0, diverge_at=None):
        self.value = tf.Variable(0.0)
        self.step, self.diverge_at = step, diverge_at

    def trackables(self):
        return {"value": self.value}

    def run_epoch(self, epoch, progress):
        self.value.assign_add(self.step)
        loss = float("nan") if epoch == self.diverge_at else float(self.value.numpy())
        return {"train_loss": loss, "note": "text is kept out of TensorBoard"}

    def epoch_line(self, record):
        return f"epoch {record['epoch']} value {record['train_loss']}"


class Config:
    def __init__(self, epochs=3, lr=0.1):
        self.epochs, self.lr = epochs, lr

    @classmethod
    def from_dict(cls, data):
        return cls(**data)


def test_epochs_count_from_one_and_resume_continues_exactly(tmp_path):
    run, _ = open_run(str(tmp_path / "r"), Config(), resume=False, from_dict=Config.from_dict)
    run.write_config({"epochs": 3, "lr": 0.1})
    log = io.StringIO()
    driver = RunDriver(run, epochs=3, meta={"kind": "count"}, log=log)
    task = CountingTask()
    history = driver.run_epochs(task, driver.restore(task.trackables(), False), end=2)
    assert [r["epoch"] for r in history] == [1, 2] and "epoch 2 value 2.0" in log.getvalue()
    # A new process: a fresh task resumes from the checkpoint of epoch 2.
    run, config = open_run(str(tmp_path / "r"), Config(epochs=4, lr=9.9), resume=True,
                           from_dict=Config.from_dict)
    assert (config.epochs, config.lr) == (4, 0.1)   # only epochs may change
    driver = RunDriver(run, epochs=config.epochs, meta={"kind": "count"}, log=io.StringIO())
    task = CountingTask()
    start = driver.restore(task.trackables(), True)
    assert start == 2 and float(task.value.numpy()) == 2.0
    history = driver.run_epochs(task, start)
    assert [r["train_loss"] for r in history] == [1.0, 2.0, 3.0, 4.0]
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3, 4]


def test_an_occupied_directory_and_another_model_are_refused(tmp_path):
    run, _ = open_run(str(tmp_path / "r"), Config(), resume=False, from_dict=Config.from_dict)
    run.write_config({"epochs": 1, "lr": 0.1})
    task = CountingTask()
    RunDriver(run, epochs=1, meta={"kind": "count"}).run_epochs(task, 0)
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        open_run(str(tmp_path / "r"), Config(), resume=False, from_dict=Config.from_dict)
    with pytest.raises(CheckpointError, match="kind is"):
        RunDriver(run, epochs=2, meta={"kind": "other"}).restore(CountingTask().trackables(), True)


def test_divergence_stops_and_names_the_last_good_checkpoint(tmp_path):
    run = RunDir(str(tmp_path / "r"))
    driver = RunDriver(run, epochs=4, meta={})
    with pytest.raises(DivergedError, match=r"epoch 3 \(train_loss is nan\).*ckpt-000002"):
        driver.run_epochs(CountingTask(diverge_at=2), 0)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_tensorboard_gets_the_numbers_of_the_record(tmp_path):
    run = RunDir(str(tmp_path / "r"))
    RunDriver(run, epochs=1, meta={}).run_epochs(CountingTask(), 0)
    tags = set()
    for name in os.listdir(run.tb_dir):
        if name.startswith("events"):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(run.tb_dir, name)):
                tags.update(v.tag for v in event.summary.value)
    assert {"train/train_loss", "epoch/seconds"} <= tags and not any("note" in t for t in tags)


def test_mean_metrics_weigh_examples_not_batches():
    metrics = MeanMetrics()
    # a batch of 3 (loss 1 each, all correct) and a batch of 1 (loss 5, wrong)
    metrics.add(tf.constant([3.0, 3.0, 3.0]))
    metrics.add(tf.constant([5.0, 0.0, 1.0]))
    assert metrics.result() == {"loss": 2.0, "acc": 0.75, "examples": 4}
    logits = tf.constant([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    sums = batch_sums(tf.constant([0, 1, 1]), logits).numpy()
    expected = -np.log(tf.nn.softmax(logits).numpy()[[0, 1, 2], [0, 1, 1]]).sum()
    np.testing.assert_allclose(sums, [expected, 2.0, 3.0], rtol=1e-6)
    assert math.isnan(MeanMetrics().result()["loss"])


def test_progress_writes_plain_lines_off_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream, "landscape", total=4, log_interval=0.0, slow_start=0.0)
    for done in range(1, 5):
        progress.update(done, "points")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("landscape: first step (includes tracing) took")
    assert lines[-1].startswith("landscape 4/4 points (100%)")
    silent = io.StringIO()
    quiet = Progress(silent, "epoch", total=10, log_interval=None, slow_start=None)
    for done in range(1, 11):
        quiet.update(done)
    assert silent.getvalue() == ""


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = str(tmp_path / "state.json")
    atomic_write_json(path, {"a": np.float32(1.5), "b": (1, 2), "c": np.arange(2)})
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write("{half")
            raise RuntimeError("crash")
    assert json.loads(open(path).read()) == {"a": 1.5, "b": [1, 2], "c": [0, 1]}
    assert os.listdir(tmp_path) == ["state.json"]
    assert to_json({"x": np.int64(3)}) == '{"x": 3}'
