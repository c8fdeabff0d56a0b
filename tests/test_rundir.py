"""tfnas.rundir: config, metrics, atomic checkpoints, mismatch errors."""

import glob
import json
import os
import random

import numpy as np
import pytest

import keras
import tensorflow as tf

from tfnas.rundir import CheckpointError, RunDir, capture_python_rng, restore_python_rng


def _model(width=4, extra=False):
    layers = [keras.layers.Conv2D(width, 3), keras.layers.BatchNormalization()]
    if extra:
        layers.append(keras.layers.Dense(width))
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    model = keras.Sequential(layers)
    model(np.zeros((1, 8, 8, 3), "float32"))
    return model


@pytest.fixture
def saved(tmp_path):
    run = RunDir(tmp_path / "run")
    model, rng = _model(), tf.random.Generator.from_seed(1)
    for epoch in (1, 2, 3):
        rng.normal([3])
        run.save_checkpoint({"model": model, "rng": rng},
                            {"epoch": epoch, "meta": {"genotype": "A"}}, step=epoch)
    return run, model, rng


def test_config_and_metrics(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_config({"lr": 0.025, "shape": (1, 2)})
    assert run.read_config() == {"lr": 0.025, "shape": [1, 2]}
    for e in range(4):
        run.append_metrics({"epoch": e, "loss": 1.0 / (e + 1)})
    with open(run.metrics_path, "a") as fh:
        fh.write('{"epoch": 4, "lo')  # a torn last line, as after a crash
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1, 2, 3]
    run.rewind_metrics("epoch", 1)
    assert [r["epoch"] for r in run.read_metrics()] == [0, 1]


def test_tensorboard_writer(tmp_path):
    run = RunDir(tmp_path / "r")
    with run.tensorboard_writer("train").as_default():
        tf.summary.scalar("loss", 1.5, step=0)
    run.close()
    assert glob.glob(os.path.join(run.tb_dir, "train", "events.out.tfevents.*"))


def test_checkpoint_round_trip_and_rotation(saved):
    run, model, rng = saved
    names = sorted(os.listdir(run.checkpoint_dir))
    assert names == ["ckpt-000002", "ckpt-000003", "latest"]  # last two kept, no temp dirs
    other, other_rng = _model(), tf.random.Generator.from_seed(99)
    state = run.restore_checkpoint({"model": other, "rng": other_rng}, expect={"genotype": "A"})
    assert state["epoch"] == 3
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(rng.normal([4]).numpy(), other_rng.normal([4]).numpy())


def test_no_checkpoint_returns_none(tmp_path):
    assert RunDir(tmp_path / "fresh").restore_checkpoint({"model": _model()}) is None


@pytest.mark.parametrize("case", ["meta", "shape", "extra_layer", "missing_object"])
def test_mismatched_checkpoint(saved, case):
    run, _, _ = saved
    trackables = {"model": _model(), "rng": tf.random.Generator.from_seed(0)}
    expect = {"genotype": "A"}
    if case == "meta":
        expect = {"genotype": "B"}
    elif case == "shape":
        trackables["model"] = _model(width=5)
    elif case == "extra_layer":
        trackables["model"] = _model(extra=True)
    else:
        del trackables["rng"]
    with pytest.raises(CheckpointError) as err:
        run.restore_checkpoint(trackables, expect=expect)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_partial_restore_takes_only_the_given_objects(saved):
    run, model, _ = saved
    other = _model()
    # Without partial, a checkpoint holding more than given is a mismatch.
    with pytest.raises(CheckpointError, match="rng"):
        run.restore_checkpoint({"model": other})
    state = run.restore_checkpoint({"model": other}, partial=True)
    assert state["epoch"] == 3
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Partial still checks what it restores, and that it exists.
    with pytest.raises(CheckpointError, match="does not match"):
        run.restore_checkpoint({"model": _model(width=5)}, partial=True)
    with pytest.raises(CheckpointError, match="does not hold optimizer"):
        run.restore_checkpoint({"model": _model(), "optimizer": tf.random.Generator.from_seed(0)},
                               partial=True)


def test_corrupt_checkpoint_fails_before_touching_variables(saved):
    run, _, _ = saved
    data_file = glob.glob(os.path.join(run.latest_checkpoint(), "ckpt.data-*"))[0]
    with open(data_file, "r+b") as fh:
        fh.seek(8)
        fh.write(b"\xff" * 16)
    target = _model()
    before = [w.numpy().copy() for w in target.weights]
    with pytest.raises(CheckpointError, match="corrupt"):
        run.restore_checkpoint({"model": target, "rng": tf.random.Generator.from_seed(0)})
    for a, b in zip(before, target.weights):
        np.testing.assert_array_equal(a, b.numpy())
    os.remove(os.path.join(run.latest_checkpoint(), "state.json"))
    with pytest.raises(CheckpointError, match="incomplete"):
        run.restore_checkpoint({"model": target})


def test_crash_during_save_keeps_last_good(saved, monkeypatch):
    run, model, rng = saved

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(tf.train.Checkpoint, "write", boom)
    with pytest.raises(OSError):
        run.save_checkpoint({"model": model, "rng": rng}, {"epoch": 4}, step=4)
    monkeypatch.undo()
    assert run.read_checkpoint_state()["epoch"] == 3
    assert not [n for n in os.listdir(run.checkpoint_dir) if n.startswith(".tmp")]


def test_python_rng_state_round_trip():
    np.random.seed(3)
    random.seed(4)
    state = json.loads(json.dumps(capture_python_rng()))
    a = (np.random.rand(3), random.random())
    restore_python_rng(state)
    b = (np.random.rand(3), random.random())
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


class _ListModel(keras.Model):
    """Sub-layers in a Python list and a SeedGenerator: the variables plain
    ``tf.train.Checkpoint(model=...)`` misses with Keras 3."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [keras.layers.Dense(4) for _ in range(3)]
        self.seed = keras.random.SeedGenerator(7)

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return x + keras.random.uniform(tf.shape(x), seed=self.seed)


def test_every_keras_variable_round_trips(tmp_path):
    run = RunDir(tmp_path / "r")
    model = _ListModel()
    model(np.ones((2, 4), "float32"))
    run.save_checkpoint({"model": model}, {"epoch": 1}, step=1)
    other = _ListModel()
    other(np.ones((2, 4), "float32"))
    other(np.ones((2, 4), "float32"))    # advance its seed state
    run.restore_checkpoint({"model": other})
    assert len(model.variables) == len(other.variables) == 7
    for a, b in zip(model.variables, other.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_checkpoints_of_kept_steps_survive_rotation(tmp_path):
    run = RunDir(tmp_path / "run")
    model = _model()
    for epoch in range(1, 7):
        run.save_checkpoint({"model": model}, {"epoch": epoch}, step=epoch, keep=2, keep_steps=(1, 3))
    names = sorted(n for n in os.listdir(run.checkpoint_dir) if n.startswith("ckpt-"))
    assert names == ["ckpt-000001", "ckpt-000003", "ckpt-000005", "ckpt-000006"]
    assert run.checkpoint_path(3) == os.path.join(run.checkpoint_dir, "ckpt-000003")
    assert run.restore_checkpoint({"model": model}, path=run.checkpoint_path(1))["epoch"] == 1


def test_run_driver_keeps_the_checkpoints_of_kept_epochs(tmp_path):
    from tfnas.runner import RunDriver

    class Task:
        tensorboard_name = ""

        def __init__(self):
            self.step = tf.Variable(0)

        def trackables(self):
            return {"step": self.step}

        def run_epoch(self, epoch, progress):
            self.step.assign_add(1)
            return {"train_loss": 1.0 / (epoch + 1)}

        def epoch_line(self, record):
            return str(record["epoch"])

    run = RunDir(tmp_path / "run")
    driver = RunDriver(run, epochs=5, meta={}, summaries=False, keep_epochs=(2,))
    driver.run_epochs(Task(), 0)
    names = sorted(n for n in os.listdir(run.checkpoint_dir) if n.startswith("ckpt-"))
    assert names == ["ckpt-000002", "ckpt-000004", "ckpt-000005"]
