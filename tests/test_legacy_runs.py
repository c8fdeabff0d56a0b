"""Run directories written by an earlier tfnas (3b10773) resume with this one,
and their resumed epoch equals the one the old code logged uninterrupted."""

import io
import json
import os
import shutil

import pytest

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "legacy_runs")


def _records(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture
def legacy_workdir(tmp_path, cifar_mini, monkeypatch):
    """The legacy runs beside their data set (``folder:legacy-data``)."""
    for split, n in (("train", 10), ("test", 5)):
        for cls in sorted(os.listdir(cifar_mini / split)):
            os.makedirs(tmp_path / "legacy-data" / split / cls)
            for name in sorted(os.listdir(cifar_mini / split / cls))[:n]:
                shutil.copy(cifar_mini / split / cls / name, tmp_path / "legacy-data" / split / cls / name)
    for run in ("train-stopped", "search-stopped"):
        shutil.copytree(os.path.join(LEGACY, run), tmp_path / run)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_legacy_training_run_resumes_to_the_logged_epoch(legacy_workdir):
    from tfnas.training import TrainConfig, train
    summary = train(TrainConfig(epochs=2), "train-stopped", resume=True, log=io.StringIO())
    assert summary["epochs_done"] == 2
    expected = _records(os.path.join(LEGACY, "train-full.metrics.jsonl"))
    got = _records(legacy_workdir / "train-stopped" / "metrics.jsonl")
    assert [r["epoch"] for r in got] == [1, 2]
    for key in ("lr", "drop_path_prob", "train_loss", "train_acc", "test_loss", "test_acc", "steps"):
        assert got[1][key] == pytest.approx(expected[1][key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_legacy_search_run_resumes_to_the_logged_epoch(legacy_workdir):
    from tfnas.search.driver import run_search
    from tfnas.search.settings import SearchSettings
    summary = run_search(SearchSettings(epochs=2), "search-stopped", resume=True, log=io.StringIO())
    expected = _records(os.path.join(LEGACY, "search-full.metrics.jsonl"))
    got = _records(legacy_workdir / "search-stopped" / "metrics.jsonl")
    # Searches then counted epochs from 0; the resumed run's metrics count from 1.
    assert [r["epoch"] for r in got] == [1, 2]
    assert [r["epoch"] for r in expected] == [0, 1]
    for key in ("lr", "loss", "acc", "alpha_loss", "alpha_acc"):
        assert got[1][key] == pytest.approx(expected[1][key], rel=1e-5, abs=1e-6), key
    assert got[1]["genotype"] == expected[1]["genotype"]
    assert summary["genotype"] == expected[1]["genotype"]
    # The config is migrated once: a second resume finds nothing to do.
    config = json.loads((legacy_workdir / "search-stopped" / "config.json").read_text())
    assert "method_config" in config and "darts" not in config
    run_search(None, "search-stopped", resume=True, log=io.StringIO())
    assert [r["epoch"] for r in _records(legacy_workdir / "search-stopped" / "metrics.jsonl")] == [1, 2]
