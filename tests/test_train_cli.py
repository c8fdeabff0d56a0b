"""train.py end to end on a tiny configuration (subprocesses where TF state matters).

One uninterrupted ``--deterministic`` run (session fixture) is shared by the
run-directory, SavedModel, kill-and-resume and mirrored tests.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(REPO, "train.py")

# A light genotype (one separable conv per normal cell) keeps tracing short.
LIGHT_GENOTYPE = json.dumps({
    "normal": [["sep_conv_3x3", 0], ["skip_connect", 1], ["avg_pool_3x3", 0], ["skip_connect", 2],
               ["max_pool_3x3", 1], ["skip_connect", 3], ["skip_connect", 2], ["avg_pool_3x3", 4]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", 0], ["skip_connect", 1], ["avg_pool_3x3", 0], ["skip_connect", 2],
               ["max_pool_3x3", 1], ["skip_connect", 3], ["skip_connect", 2], ["avg_pool_3x3", 4]],
    "reduce_concat": [2, 3, 4, 5]})
EPOCHS = 3
TINY = ["--init-channels", "4", "--layers", "3", "--epochs", str(EPOCHS), "--batch-size", "32",
        "--eval-batch-size", "64", "--seed", "1", "--drop-path-prob", "0.2", "--histogram-every", "2"]
COMPARED = ("epoch", "lr", "drop_path_prob", "train_loss", "train_acc", "test_loss", "test_acc", "steps")


def _env(**extra):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _train(args, timeout=420, **env):
    return subprocess.run([sys.executable, TRAIN_PY, *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(**env), cwd=REPO)


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, cifar_mini):
    """20 train / 10 test real CIFAR-10 images per class."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    for split, n in (("train", 20), ("test", 10)):
        for cls in sorted(os.listdir(cifar_mini / split)):
            os.makedirs(root / split / cls)
            for name in sorted(os.listdir(cifar_mini / split / cls))[:n]:
                shutil.copy(cifar_mini / split / cls / name, root / split / cls / name)
    return str(root)


def _launch(args, log_path, **env):
    out, err = open(log_path + ".out", "w"), open(log_path, "w")
    proc = subprocess.Popen([sys.executable, TRAIN_PY, *args], stdout=out, stderr=err,
                            env=_env(**env), cwd=REPO)
    return proc, (out, err)


@pytest.fixture(scope="session")
def runs(tiny_data, tmp_path_factory):
    """Start the uninterrupted, the to-be-killed and the mirrored runs at once:
    start-up and tracing are single-threaded, so they overlap well on 2 cores.
    A watcher SIGKILLs the second run as soon as its first checkpoint exists."""
    base = tmp_path_factory.mktemp("runs")
    common = ["--genotype", LIGHT_GENOTYPE, "--dataset", f"folder:{tiny_data}", *TINY]
    paths = {name: str(base / name) for name in ("full", "killed", "mirrored")}
    export = str(base / "export")
    procs = {
        "full": _launch([*common, "--deterministic", "--out", paths["full"], "--export-dir", export,
                         "--json"], str(base / "full.log")),
        "killed": _launch([*common, "--deterministic", "--out", paths["killed"], "--no-export"],
                          str(base / "killed.log")),
        "mirrored": _launch([*common, "--strategy", "mirrored", "--cpu-devices", "2", "--out",
                             paths["mirrored"], "--no-export", "--json"], str(base / "mirrored.log")),
    }
    killed = {}

    def watch():
        proc = procs["killed"][0]
        latest = os.path.join(paths["killed"], "checkpoints", "latest")
        while proc.poll() is None and not os.path.exists(latest):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed["returncode"] = proc.returncode
        killed["epochs_logged"] = len(_metrics(paths["killed"])) if os.path.exists(
            os.path.join(paths["killed"], "metrics.jsonl")) else 0

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    info = {"paths": paths, "export": export, "data": tiny_data, "procs": procs, "killed": killed,
            "watcher": watcher, "logs": {n: str(base / f"{n}.log") for n in procs}}
    yield info
    for proc, files in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in files:
            f.close()


def _finish(runs, name, timeout=420):
    """Wait for a launched run; its (stdout, stderr)."""
    proc, _ = runs["procs"][name]
    proc.wait(timeout=timeout)
    out, err = open(runs["logs"][name] + ".out").read(), open(runs["logs"][name]).read()
    assert proc.returncode == 0, err[-3000:]
    return out, err


@pytest.fixture(scope="session")
def full_run(runs):
    out, err = _finish(runs, "full")
    return {"out": runs["paths"]["full"], "export": runs["export"], "summary": json.loads(out),
            "log": err, "data": runs["data"]}


@pytest.mark.slow
def test_run_directory_contents(full_run):
    out, summary = full_run["out"], full_run["summary"]
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["genotype_resolved"]["normal"][0] == ["sep_conv_3x3", 0]
    assert config["epochs"] == EPOCHS and config["deterministic"] and config["init_channels"] == 4
    records = _metrics(out)
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "train_seconds"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert all(0 < r["train_seconds"] < r["seconds"] for r in records)
    assert records[0]["lr"] == pytest.approx(0.025) and records[1]["lr"] < 0.025
    assert records[1]["drop_path_prob"] == pytest.approx(0.2 / EPOCHS)
    assert summary["trace_counts"] == {"train": 1, "eval": 1}   # compiled once per run
    assert summary["final"]["epoch"] == EPOCHS
    assert "parameters without the auxiliary head" in full_run["log"]
    assert "auxiliary head:" in full_run["log"]
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == \
        ["ckpt-%06d" % (EPOCHS - 1), "ckpt-%06d" % EPOCHS, "latest"]
    assert os.path.isfile(os.path.join(full_run["export"], "model.keras"))
    # TensorBoard: scalars, genotype text, cell images, histograms
    import tensorflow as tf
    tags = set()
    for name in os.listdir(os.path.join(out, "tb")):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(out, "tb", name)):
            tags.update(v.tag for v in event.summary.value)
    assert {"train/train_loss", "test/test_acc", "genotype", "cells/normal"} <= tags
    assert any(t.startswith("weights/") for t in tags)


@pytest.mark.slow
def test_saved_model_predictions_match_logged_accuracy(full_run):
    import tensorflow as tf
    from tfnas import data
    loaded = tf.saved_model.load(os.path.join(full_run["export"], "saved_model"))
    prep = json.load(open(os.path.join(full_run["export"], "preprocessing.json")))
    images, labels = data.open_dataset(f"folder:{full_run['data']}").arrays("test")
    logits = loaded.serve(tf.constant(images))["logits"].numpy()   # raw uint8: serve normalises
    accuracy = float(np.mean(np.argmax(logits, -1) == labels))
    assert accuracy == pytest.approx(full_run["summary"]["final"]["test_acc"], abs=1e-9)
    x = (images / 255.0 - np.array(prep["mean"])) / np.array(prep["std"])
    normalized = loaded.serve_normalized(tf.constant(x, tf.float32))["logits"].numpy()
    np.testing.assert_allclose(normalized, logits, rtol=1e-4, atol=1e-5)
    out = loaded.signatures["serving_default"](images=tf.constant(images[:4]))["logits"].numpy()
    np.testing.assert_allclose(out, logits[:4], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(runs, full_run):
    runs["watcher"].join(timeout=420)
    killed = runs["killed"]
    assert killed["returncode"] == -signal.SIGKILL, "the run ended before it could be killed"
    assert killed["epochs_logged"] < EPOCHS
    out = runs["paths"]["killed"]
    resumed = _train(["--out", out, "--resume", "--no-export"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    want = full_run["summary"]["final"]
    got = _metrics(out)
    assert [r["epoch"] for r in got] == list(range(1, EPOCHS + 1))
    assert {k: got[-1][k] for k in COMPARED} == {k: want[k] for k in COMPARED}


@pytest.mark.slow
def test_mirrored_two_devices_tracks_single_device(runs, full_run):
    summary = json.loads(_finish(runs, "mirrored")[0])
    assert summary["trace_counts"] == {"train": 1, "eval": 1}
    single, mirrored = _metrics(full_run["out"]), _metrics(runs["paths"]["mirrored"])
    assert len(mirrored) == EPOCHS
    for a, b in zip(single, mirrored):
        # same global batch and data order; only per-replica BN statistics and
        # drop-path masks differ
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.03)


_EARLY_CROP_RUNS = """
import json, sys
from tfnas import training
def config():
    return training.TrainConfig.from_preset(
        "small", genotype=sys.argv[1], dataset=sys.argv[2], init_channels=4, layers=3, epochs=3,
        batch_size=32, eval_batch_size=64, seed=1, deterministic=True, histogram_every=0,
        early_crop=24, early_crop_epochs=2)
full = training.train(config(), sys.argv[3] + "/full", log=None)
first = training.train(config(), sys.argv[3] + "/resumed", log=None, stop_after_epochs=1)
rest = training.train(config(), sys.argv[3] + "/resumed", log=None, resume=True,
                      export_dir=sys.argv[3] + "/export")
print(json.dumps({"full": full, "first": first, "rest": rest}))
"""


@pytest.mark.slow
def test_early_crops_then_full_size_and_resume_across_the_switch(tiny_data, tmp_path):
    """Two epochs on 24-pixel crops, then one at 32: the training step is
    traced once per size, and a run stopped inside the crop phase resumes
    into the full-size phase with the same metrics as an uninterrupted run."""
    done = subprocess.run([sys.executable, "-c", _EARLY_CROP_RUNS, LIGHT_GENOTYPE, f"folder:{tiny_data}",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, env=_env(), cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["full"]["trace_counts"] == {"train": 2, "eval": 1}
    assert result["first"]["trace_counts"] == {"train": 1, "eval": 1}
    assert result["rest"]["trace_counts"] == {"train": 2, "eval": 1}   # one crop epoch left, then 32
    full, resumed = _metrics(str(tmp_path / "full")), _metrics(str(tmp_path / "resumed"))
    assert [r["train_crop"] for r in full] == [24, 24, None]
    assert [{k: r[k] for k in COMPARED} for r in resumed] == [{k: r[k] for k in COMPARED} for r in full]
    assert os.path.isdir(str(tmp_path / "export" / "saved_model"))


def test_streams_follow_the_strategy_passed_in(tiny_data, tmp_path, monkeypatch):
    """train() picks its data streams by the strategy it runs under, not by
    the configured name: under a multi-worker strategy (faked: one process
    cannot form a cluster) every epoch gets its own pipeline instead of the
    long-lived streams."""
    import tensorflow as tf
    from tfnas import training
    streams = []
    original = training.Trainer.stream
    monkeypatch.setattr(training.Trainer, "stream",
                        lambda self, *args: streams.append(args) or original(self, *args))

    def run(name):
        config = training.TrainConfig.from_preset(
            "small", genotype=LIGHT_GENOTYPE, dataset=f"folder:{tiny_data}", init_channels=4,
            layers=3, epochs=1, batch_size=32, eval_batch_size=64, histogram_every=0)
        return training.train(config, str(tmp_path / name), log=None,
                              strategy=tf.distribute.get_strategy())

    assert run("plain")["final"]["epoch"] == 1
    assert len(streams) == 2   # train + test, each one iterator for the run
    streams.clear()
    monkeypatch.setattr(training, "is_multiworker", lambda strategy: True)
    assert run("multiworker")["final"]["epoch"] == 1
    assert streams == []


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_worker_multiworker_run(tiny_data, tmp_path):
    out = str(tmp_path / "mw")
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    args = ["--genotype", LIGHT_GENOTYPE, "--dataset", f"folder:{tiny_data}", *TINY,
            "--epochs", "1", "--strategy", "multiworker", "--out", out, "--no-export"]
    procs = []
    for index in (0, 1):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([sys.executable, TRAIN_PY, *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=_env(TF_CONFIG=tf_config),
                                      cwd=REPO))
    try:
        results = [p.communicate(timeout=360) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    chief = _metrics(out)
    worker = _metrics(os.path.join(out, "workers", "1"))
    assert len(chief) == 1 and chief[0]["train_loss"] == pytest.approx(worker[0]["train_loss"])


# -- bad input: one line, exit code 2 (in-process: these fail before training) ----------

def _main(args, capsys):
    from tfnas.cli.train import main
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_unknown_genotype(capsys, tmp_path):
    code, err = _main(["--genotype", "NO_SUCH_CELL", "--dataset", "cifar10", "--out", str(tmp_path)], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: unknown genotype")


@pytest.mark.parametrize("case", ["missing", "empty", "wrong_size", "resume_without_out", "tfds_offline",
                                  "early_crop_too_big"])
def test_bad_dataset_and_usage(case, capsys, tmp_path, tiny_data):
    args = ["--genotype", "DARTS_V2", "--out", str(tmp_path / "run"), "--no-export"]
    if case == "missing":
        args += ["--dataset", f"folder:{tmp_path / 'nope'}"]
        expect = "does not exist"
    elif case == "empty":
        (tmp_path / "empty" / "train").mkdir(parents=True)
        args += ["--dataset", f"folder:{tmp_path / 'empty'}"]
        expect = "no class sub-folders"
    elif case == "wrong_size":
        from PIL import Image
        bad = tmp_path / "bad"
        shutil.copytree(tiny_data, bad)
        Image.new("RGB", (28, 28)).save(bad / "test" / "cat" / "zz.png")
        args += ["--dataset", f"folder:{bad}"]
        expect = "28x28"
    elif case == "resume_without_out":
        args = ["--resume"]
        expect = "--resume needs --out"
    elif case == "early_crop_too_big":
        args += ["--dataset", f"folder:{tiny_data}", "--early-crop", "32", "--early-crop-epochs", "2"]
        expect = "--early-crop must be smaller than the 32x32 images"
    else:
        args += ["--dataset", "cifar10", "--data-dir", str(tmp_path / "tfds")]
        expect = "not prepared"
    code, err = _main(args, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err


@pytest.mark.slow
@pytest.mark.parametrize("case", ["corrupt", "mismatch"])
def test_bad_checkpoint_on_resume(case, full_run, tmp_path, capsys):
    run = str(tmp_path / "copy")
    shutil.copytree(full_run["out"], run)
    config_path = os.path.join(run, "config.json")
    config = json.load(open(config_path))
    config["deterministic"] = False   # keep op determinism out of the test process
    if case == "mismatch":
        config["init_channels"] = 6   # another network shape than the checkpoint's
    json.dump(config, open(config_path, "w"))
    latest = os.path.join(run, "checkpoints", "ckpt-%06d" % EPOCHS)
    data_file = [f for f in os.listdir(latest) if f.startswith("ckpt.data")][0]
    if case == "corrupt":
        with open(os.path.join(latest, data_file), "r+b") as fh:
            fh.seek(16)
            fh.write(b"\x00\xff" * 32)
    code, err = _main(["--out", run, "--resume", "--epochs", str(EPOCHS + 1), "--no-export"], capsys)
    assert code == 2 and len(err) == 1, err
    assert ("corrupt" if case == "corrupt" else "init_channels is 4 in the checkpoint but 6 now") in err[0]
    # nothing lost: the checkpoint files are still there
    assert os.path.isfile(os.path.join(latest, data_file))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(full_run, tmp_path, capsys):
    run = str(tmp_path / "nan")
    shutil.copytree(full_run["out"], run)
    config_path = os.path.join(run, "config.json")
    config = json.load(open(config_path))
    config.update(deterministic=False, lr=1e38, lr_min=1e38)   # diverges at once
    json.dump(config, open(config_path, "w"))
    code, err = _main(["--out", run, "--resume", "--epochs", str(EPOCHS + 2), "--no-export"], capsys)
    assert code == 3 and len(err) == 1, err
    assert f"diverged in epoch {EPOCHS + 1}" in err[0] and "ckpt-%06d" % EPOCHS in err[0]
    assert len(_metrics(run)) == EPOCHS
    from tfnas.rundir import RunDir
    assert RunDir(run).read_checkpoint_state()["epoch"] == EPOCHS
