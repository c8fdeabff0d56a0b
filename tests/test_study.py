"""tfnas.study: design and manifest (no TensorFlow), and a tiny study end to
end: every figure, the three reports, correlations that match the report's
own table, resume, status, the HParams dashboard, and the Ray path."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tfnas.study import stats
from tfnas.study.design import Manifest, StudyError, StudySettings, ProbeSettings, choose_cells
from tfnas.topology import cell_width
from tfnas.genotypes import Genotype

REPO = pathlib.Path(__file__).resolve().parents[1]


# -- design (fast) ---------------------------------------------------------------------

def test_stratified_design_is_the_base_plus_k_per_band():
    cells = choose_cells(StudySettings(variants=["stratified"], per_band=3))
    assert len(cells) == 13 and cells[0].name == "DARTS_V2" and cells[0].role == "base"
    widths = [c.width for c in cells[1:]]
    assert sorted(set(widths)) == [2.0, 2.5, 3.0, 3.5] and all(widths.count(w) == 3 for w in set(widths))
    for cell in cells:
        assert cell_width(Genotype.from_dict(cell.genotype).cell("normal")) == cell.width
        assert cell.params > 0
    again = choose_cells(StudySettings(variants=["stratified"], per_band=3))
    assert [c.name for c in again] == [c.name for c in cells]   # deterministic by seed


def test_other_designs_and_compare_lists():
    cells = choose_cells(StudySettings(variants=["conn", "widest", "deepest"], variant_seeds=[1, 2],
                                       compare=["NASNet", "DARTS_V2"]))
    assert [c.name for c in cells] == ["DARTS_V2", "DARTS_V2_CONN1", "DARTS_V2_CONN2", "DARTS_V2_WIDEST",
                                       "DARTS_V2_DEEPEST", "NASNet"]   # the base once
    assert cells[3].width == 4.0 and cells[3].depth == 2
    with pytest.raises(StudyError, match="variant-seeds"):
        StudySettings(variants=["ops"]).validate()
    with pytest.raises(StudyError, match="unknown variant design"):
        StudySettings(variants=["random"]).validate()
    with pytest.raises(StudyError, match="compare"):
        choose_cells(StudySettings(compare=["NoSuchNet"]))
    with pytest.raises(StudyError, match="probe epochs"):
        ProbeSettings(epochs=[0]).validate()


def test_study_settings_make_train_configs_and_round_trip():
    settings = StudySettings(preset="study", seeds=[3], overrides={"epochs": 7}, dataset="folder:x")
    config = settings.train_config("DARTS_V2_CONN3", 3)
    assert (config.batch_size, config.epochs, config.seed, config.dataset) == (80, 7, 3, "folder:x")
    assert StudySettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    settings.probe.epochs = [1, 5, "final", 99]
    assert settings.probe_epochs() == [1, 5, 7]


def test_a_study_directory_keeps_its_settings(tmp_path):
    from tfnas.study.run import open_study
    settings = StudySettings(variants=["widest"], dataset="folder:x")
    manifest = open_study(str(tmp_path), settings)
    assert [r["run_dir"] for r in manifest.runs] == ["runs/DARTS_V2-s0", "runs/DARTS_V2_WIDEST-s0"]
    changed = StudySettings(variants=["widest"], dataset="folder:x", overrides={"epochs": 3})
    with pytest.raises(StudyError, match="overrides.epochs"):
        open_study(str(tmp_path), changed, given={"overrides"})
    # flags not given keep the stored values; the analysis may change
    changed.analysis.early_epoch = 2
    assert open_study(str(tmp_path), changed, given={"genotype"}).settings.overrides == {}
    assert Manifest(str(tmp_path)).load().settings.analysis.early_epoch is None
    open_study(str(tmp_path), changed, given={"genotype", "analysis"})
    assert Manifest(str(tmp_path)).load().settings.analysis.early_epoch == 2
    with pytest.raises(StudyError, match="holds no study"):
        open_study(str(tmp_path / "empty"), None)


# -- a tiny study, end to end ---------------------------------------------------------

TINY = ["--genotype", "DARTS_V2", "--variants", "stratified", "--per-band", "1", "--bands", "2,3,3.5",
        "--preset", "study-small", "--epochs", "2", "--init-channels", "4", "--layers", "3",
        "--batch-size", "32", "--probe-epochs", "final", "--probe-images", "20", "--probe-batch", "10",
        "--top-n", "1", "--hessian-iter", "6", "--trace-iter", "3", "--landscape-points", "3",
        "--landscape-images", "20", "--deterministic"]
FIGURES = ("cells", "test_loss_curves", "test_acc_curves", "landscape_contours", "gradvar_surfaces",
           "scatter", "early_vs_final")
PER_CELL = ("final_test_acc", "final_test_loss", "top_eigenvalue", "lambda_min", "trace",
            "gradient_variance", "early_test_acc")


@pytest.fixture(scope="session")
def tiny_data(cifar_mini, tmp_path_factory):
    root = tmp_path_factory.mktemp("study-data")
    for split, count in (("train", 12), ("test", 4)):     # 120 train, 40 test images
        for cls in sorted(os.listdir(cifar_mini / split)):
            os.makedirs(root / split / cls)
            for name in sorted(os.listdir(cifar_mini / split / cls))[:count]:
                shutil.copy(cifar_mini / split / cls / name, root / split / cls / name)
    return root


@pytest.fixture(scope="session")
def tiny_study(tiny_data, tmp_path_factory):
    # A fresh process, as a user runs it: its one intra-op thread (a
    # deterministic study) is set before TensorFlow starts.
    out = tmp_path_factory.mktemp("study") / "tiny"
    done = subprocess.run([sys.executable, str(REPO / "analyze.py"), "study", "--out", str(out),
                           "--dataset", f"folder:{tiny_data}", *TINY], cwd=REPO, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_tiny_study_writes_every_figure_and_report(tiny_study):
    for name in FIGURES:
        for suffix in ("png", "svg"):
            assert os.path.getsize(tiny_study / "figures" / f"{name}.{suffix}") > 1000, name
    report = json.loads((tiny_study / "report.json").read_text())
    assert len(report["cells"]) == 4 and report["cells"][0]["name"] == "DARTS_V2"
    for cell in report["cells"]:
        assert {"name", "genotype", "width", "depth", "params"} <= set(cell)
        for key in PER_CELL:
            assert cell[key] is not None and np.isfinite(cell[key]), key
    assert {(r["x"], r["y"]) for r in report["correlations"]} >= {
        ("width", "top_eigenvalue"), ("depth", "gradient_variance"), ("width", "epochs_to_target"),
        ("width", "early_auc"), ("early_test_acc", "final_test_acc")}
    assert len(report["verdicts"]) == 4 and all(v["sentences"] for v in report["verdicts"])
    md, page = (tiny_study / "report.md").read_text(), (tiny_study / "report.html").read_text()
    assert "## Verdicts" in md and "With only 4 cells" in md
    assert page.count("data:image/png;base64,") == len(FIGURES) and "<img" in page and "src='figures" not in page
    for cell in report["cells"]:
        assert cell["name"] in md and cell["name"] in page


@pytest.mark.slow
def test_report_correlations_match_its_own_table(tiny_study):
    report = json.loads((tiny_study / "report.json").read_text())
    cells, settings = report["cells"], report["settings"]["analysis"]
    assert report["correlations"]
    for row in report["correlations"]:
        x = [np.nan if c.get(row["x"]) is None else c[row["x"]] for c in cells]
        y = [np.nan if c.get(row["y"]) is None else c[row["y"]] for c in cells]
        again = stats.correlate(x, y, row["x"], row["y"], settings["resamples"], settings["level"])
        assert json.loads(json.dumps(again)) == row
        if row["spearman"] is not None:
            assert row["spearman"] == pytest.approx(stats.spearman(x, y))


@pytest.mark.slow
def test_tiny_study_resumes_reports_status_and_hparams(tiny_study, tiny_data, capsys):
    from tfnas.cli import analyze
    # a second run: every job skipped
    assert analyze.main(["study", "--out", str(tiny_study), "--json"]) == 0
    session = json.loads(capsys.readouterr().out)["session"]
    assert session["jobs_run"] == 0 and session["jobs_failed"] == 0
    # an interrupted probe job: its output removed, its status says running (a dead pid)
    probe = tiny_study / "runs" / "DARTS_V2-s0" / "study-probes" / "epoch-002.json"
    before = json.loads(probe.read_text())
    probe.unlink()
    status_file = tiny_study / "status" / "probe-DARTS_V2-s0-e002.json"
    status = json.loads(status_file.read_text())
    status.update(state="running", pid=2 ** 22 + 7)
    status_file.write_text(json.dumps(status))
    assert analyze.main(["study", "--status", str(tiny_study), "--json"]) == 0
    jobs = {j["job"]: j for j in json.loads(capsys.readouterr().out)["jobs"]}
    assert jobs["probe-DARTS_V2-s0-e002"]["state"] == "interrupted"
    assert jobs["train-DARTS_V2-s0"]["state"] == "done"
    # other settings are refused by name
    assert analyze.main(["study", "--out", str(tiny_study), "--epochs", "3"]) == 2
    assert "overrides.epochs" in capsys.readouterr().err
    # continuing redoes the interrupted probe, and only it, to the same numbers (deterministic;
    # in a fresh process, with the one intra-op thread of the first run)
    done = subprocess.run([sys.executable, str(REPO / "analyze.py"), "study", "--out", str(tiny_study),
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["session"]["jobs_run"] == 1
    after = json.loads(probe.read_text())
    assert after["hessian"]["extremes"] == before["hessian"]["extremes"]
    assert after["gradient_variance"] == before["gradient_variance"]
    _assert_hparams(tiny_study)


def _assert_hparams(study):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    run = study / "runs" / "DARTS_V2_CONN18551-s0" / "tb" / "hparams"
    acc = event_accumulator.EventAccumulator(str(run), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["width"].number_value == 2.0 and hparams["seed"].number_value == 0
    assert {"study/final_test_acc", "study/top_eigenvalue", "study/gradient_variance"} <= set(acc.Tags()["tensors"])
    assert os.listdir(study / "tb-hparams")


@pytest.mark.slow
def test_the_ray_path_gives_the_local_results(tiny_study, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    from tfnas.study.results import collect
    from tfnas.study.run import run_study
    settings = Manifest(str(tiny_study)).load().settings
    root = os.path.dirname(os.path.dirname(os.path.abspath(stats.__file__)))
    ray.init(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(root)}},
             log_to_driver=False, include_dashboard=False)
    try:
        outcome = run_study(str(tmp_path / "ray"), settings, ray="local", log=None, report=False)
    finally:
        ray.shutdown()
    assert not [r for r in outcome["results"] if r["state"] == "failed"]
    local, remote = collect(str(tiny_study))["cells"], collect(str(tmp_path / "ray"))["cells"]
    for a, b in zip(local, remote):
        assert a["name"] == b["name"]
        for key in PER_CELL:
            assert a[key] == pytest.approx(b[key], rel=1e-6), (a["name"], key)


@pytest.mark.slow
def test_a_process_pool_gives_the_local_results(tiny_study, tmp_path):
    # Two cells (the base and its widest variant) on two worker processes;
    # the base cell's numbers equal the tiny study's (deterministic, one
    # intra-op thread in every process).
    from tfnas.study.results import collect
    from tfnas.study.run import run_study
    settings = Manifest(str(tiny_study)).load().settings
    settings.variants, settings.per_band = ["widest"], 1
    outcome = run_study(str(tmp_path / "pool"), settings, workers=2, log=None, report=False)
    assert outcome["session"]["executor"] == "pool"
    assert [r["state"] for r in outcome["results"]] == ["done"] * 4
    local = collect(str(tiny_study))["cells"][0]
    pooled = collect(str(tmp_path / "pool"))["cells"]
    assert [c["name"] for c in pooled] == ["DARTS_V2", "DARTS_V2_WIDEST"]
    for key in PER_CELL:
        assert pooled[0][key] == pytest.approx(local[key], rel=1e-6), key

