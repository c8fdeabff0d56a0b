"""search.py --method enas / random end to end: kill and resume, --space darts,
the genotype trains, analyze.py drift (subprocesses: search.py sets its
thread pools at start)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two-node cells, C=4, 3 layers, few steps: a search in about a minute.
TINY = ["--nodes", "2", "--init-channels", "4", "--layers", "3", "--batch-size", "8",
        "--steps-per-epoch", "3", "--derive-samples", "3", "--deterministic", "--seed", "3"]
CONTROLLER = ["--controller-updates", "2", "--samples-per-update", "2"]


def _search(args, cifar_mini, **kwargs):
    return subprocess.Popen([sys.executable, os.path.join(REPO, "search.py"), *args,
                             "--dataset", f"folder:{cifar_mini}"], cwd=REPO, **kwargs)


def _records(run):
    with open(os.path.join(run, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _checkpoint_tensors(run):
    import tensorflow as tf
    with open(os.path.join(run, "checkpoints", "latest")) as fh:
        prefix = os.path.join(run, "checkpoints", fh.read().strip(), "ckpt")
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "OBJECT_GRAPH" not in name and "save_counter" not in name}


@pytest.fixture(scope="module")
def enas_runs(cifar_mini, tmp_path_factory, kill_at_checkpoint):
    """An uninterrupted 2-epoch ENAS search and the same search killed after
    its first checkpoint, started together (tracing overlaps on 2 cores)."""
    base = tmp_path_factory.mktemp("enas")
    straight, killed = str(base / "straight"), str(base / "killed")
    args = ["--method", "enas", *TINY, *CONTROLLER, "--epochs", "2"]
    first = _search([*args, "--out", straight, "--json"], cifar_mini, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    second = _search([*args, "--out", killed], cifar_mini, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    kill_at_checkpoint(second, killed)
    out, err = first.communicate(timeout=900)
    assert first.returncode == 0, err
    return straight, killed, json.loads(out)


@pytest.mark.slow
def test_killed_enas_search_resumes_to_the_same_controller_and_child(enas_runs, cifar_mini):
    straight, killed, summary = enas_runs
    assert os.path.exists(os.path.join(killed, "checkpoints", "latest"))
    resumed = subprocess.run([sys.executable, os.path.join(REPO, "search.py"), "--out", killed,
                              "--resume"], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _checkpoint_tensors(straight), _checkpoint_tensors(killed)
    assert a.keys() == b.keys()
    assert any("controller" in k for k in a) and any("model" in k for k in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert [r["epoch"] for r in _records(killed)] == [1, 2]
    assert _records(killed)[-1]["genotype"] == summary["genotype"]
    assert "not final accuracy" in summary["note"]


@pytest.mark.slow
def test_enas_records_the_sampled_topology_and_drift_plots_it(enas_runs, tmp_path):
    straight, _, _ = enas_runs
    records = _records(straight)
    for record in records:
        assert 1 <= record["sampled_normal_width_min"] <= record["sampled_normal_width_mean"] \
            <= record["sampled_normal_width_max"] <= 2   # two nodes: widths 1 .. 2
        assert 0 <= record["controller_reward"] <= 1
        assert 0 <= record["derive_best_acc"] <= 1 and record["derive_samples"] == 3
    out = str(tmp_path / "drift")
    done = subprocess.run([sys.executable, os.path.join(REPO, "analyze.py"), "drift", straight,
                           "--out", out, "--json"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [e["epoch"] for e in result["runs"][0]["epochs"]] == [1, 2]
    for figure in result["figures"]:
        assert os.path.getsize(figure) > 1000


@pytest.mark.slow
def test_random_search_and_enas_on_the_darts_space_yield_trainable_genotypes(cifar_mini, tmp_path):
    runs = {"random": ["--method", "random"], "darts-space": ["--method", "enas", "--space", "darts",
                                                              *CONTROLLER]}
    procs = {name: _search([*args, *TINY, "--epochs", "1", "--out", str(tmp_path / name), "--json"],
                           cifar_mini, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in runs.items()}
    summaries = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        summaries[name] = json.loads(out)
    ops = {op for op, _ in summaries["darts-space"]["genotype"]["normal"]}
    assert ops <= {"max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                   "dil_conv_3x3", "dil_conv_5x5"}
    assert summaries["darts-space"]["genotype"]["normal_concat"] == [2, 3]   # DARTS: concat all
    assert "controller_reward" not in _records(str(tmp_path / "random"))[0]
    # train.py accepts and trains the derived genotype.
    genotype_file = summaries["random"]["genotype_file"]
    train = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--genotype", genotype_file,
                            "--dataset", f"folder:{cifar_mini}", "--init-channels", "4", "--layers", "3",
                            "--epochs", "1", "--batch-size", "256", "--out", str(tmp_path / "train"),
                            "--no-export", "--json"], capture_output=True, text=True, cwd=REPO,
                           timeout=900)
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout)["final"]["epoch"] == 1


def test_flags_of_another_method_are_one_line_errors(capsys):
    from tfnas.cli.search import main
    assert main(["--method", "enas", "--order", "2"]) == 2
    assert capsys.readouterr().err.strip() == "error: --order does not apply to --method enas"
    assert main(["--method", "darts", "--controller-updates", "3"]) == 2
    assert "--controller-updates does not apply to --method darts" in capsys.readouterr().err
