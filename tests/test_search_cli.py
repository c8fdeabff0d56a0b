"""search.py: usage errors, dry run, a killed-and-resumed deterministic search,
and train.py accepting the derived genotype."""

import json
import os
import subprocess
import sys

import pytest

from tfnas.cli.search import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny search: 1-node cells (all 8 DARTS operations on each edge), C=4, 3 layers.
TINY = ["--method", "darts", "--order", "1", "--nodes", "1", "--init-channels", "4",
        "--layers", "3", "--batch-size", "8", "--steps-per-epoch", "2", "--eval-batches", "1",
        "--deterministic", "--seed", "3"]


@pytest.mark.parametrize("argv,message", [
    (["--resume"], "--resume needs --out"),
    (["--order", "1", "--hessian", "exact"], "--hessian applies to --order 2 only"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--order", "2", "--hessian", "exact", "--low-memory"], "use hessian fd"),
    (["--dataset", "folder:/nonexistent/data", "--out", "unused"], "error:"),
    (["--method", "enas", "--low-memory"], "--low-memory does not apply to --method enas"),
])
def test_bad_input_is_one_line(argv, message, capsys, tmp_path):
    argv = [a if a != "unused" else str(tmp_path / "run") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_dry_run_json_reports_sizes(capsys):
    assert main(["--method", "darts", "--dry-run", "--json", "--nodes", "2",
                 "--init-channels", "4", "--layers", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["alphas"] == 2 * 5 * 8  # 2 cell types x 5 edges x 8 operations
    assert out["alpha_shape"] == [5, 8]
    assert out["weights"] > 0 and out["space"]["num_nodes"] == 2
    assert out["kernels"]["name"] == "cpu" and out["kernels"]["pointwise_matmul"]   # auto on a CPU


def _final_alphas(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return records, records[-1]["alphas_raw"]


@pytest.mark.slow
def test_killed_search_resumes_to_the_same_alphas(tmp_path, cifar_mini, capsys, kill_at_checkpoint):
    data = ["--dataset", f"folder:{cifar_mini}"]
    straight = str(tmp_path / "straight")
    run = subprocess.run([sys.executable, os.path.join(REPO, "search.py")] + TINY + data
                         + ["--epochs", "2", "--out", straight, "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert "not final accuracy" in summary["note"]
    assert summary["train_command"].startswith(
        f"python train.py --genotype {os.path.join(straight, 'genotype.json')}")

    # The same search in a process killed once its first checkpoint is written.
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "search.py")] + TINY + data
                            + ["--epochs", "2", "--out", killed],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    assert kill_at_checkpoint(proc, killed)
    # Resume in a fresh process too: search.py sets its thread pools at start,
    # and float reductions depend on them, so every compared epoch must run
    # under the same settings (the pytest process's TF is already set up).
    resumed = subprocess.run([sys.executable, os.path.join(REPO, "search.py"), "--out", killed,
                              "--resume"], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout
    assert "resumed" in out or "nothing" in out or "epoch 2/2" in out
    # Said before the long silent first step, not after it.
    assert out.index("compiling the search step") < out.index("first step (includes tracing)")

    records, resumed_alphas = _final_alphas(killed)
    _, straight_alphas = _final_alphas(straight)
    assert [r["epoch"] for r in records] == [1, 2]
    assert resumed_alphas == straight_alphas  # bit-identical
    assert straight_alphas != records[0]["alphas_raw"]  # and they did change in epoch 2

    # train.py accepts the derived genotype file.
    from tfnas.cli.train import _config_from_args, build_parser
    genotype_file = os.path.join(straight, "genotype.json")
    config, genotype = _config_from_args(build_parser().parse_args(
        ["--genotype", genotype_file, "--dataset", f"folder:{cifar_mini}"]))
    assert genotype.to_dict() == summary["genotype"]
    assert os.path.isfile(os.path.join(straight, "genotypes", "epoch_002.json"))
    with open(os.path.join(straight, "genotype.txt")) as fh:
        assert fh.read().startswith("Genotype(normal=")
    assert os.listdir(os.path.join(straight, "tb", "search"))
