"""analyze.py hessian|gradvar|landscape: end to end on a run trained by train.py,
on .keras files, and bad input."""

import json
import os
import shutil

import numpy as np
import pytest

from tfnas.cli import analyze, train


@pytest.fixture(scope="module")
def tiny_folder(cifar_mini, tmp_path_factory):
    """3 classes, 16 train / 8 test images each, copied from cifar10-mini."""
    root = tmp_path_factory.mktemp("tinydata")
    for split, count in (("train", 16), ("test", 8)):
        for cls in sorted(os.listdir(cifar_mini / split))[:3]:
            os.makedirs(root / split / cls)
            for name in sorted(os.listdir(cifar_mini / split / cls))[:count]:
                shutil.copy(cifar_mini / split / cls / name, root / split / cls / name)
    return root


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    import keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, strides=4),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


@pytest.mark.slow
def test_landscape_end_to_end_on_a_trained_run(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--genotype", "DARTS_V2", "--dataset", f"folder:{tiny_folder}", "--init-channels", "4",
                       "--layers", "3", "--epochs", "1", "--batch-size", "16", "--out", str(run),
                       "--no-export"]) == 0
    capsys.readouterr()
    assert analyze.main(["landscape", str(run), "--points", "5", "--batch-size", "12", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "landscape 25/25 points" in captured.err          # progress on screen
    contour = result["plots"]["contour"]
    assert contour == str(run / "probes" / "landscape_contour.png")
    import matplotlib.image
    image = matplotlib.image.imread(contour)
    assert image.shape[0] > 300 and len(np.unique(image[..., :3].reshape(-1, 3).round(2), axis=0)) > 50
    loss = np.array(result["landscape"]["loss"], dtype=float)
    assert loss.shape == (5, 5) and np.isfinite(loss).all() and loss.max() > loss[2, 2]
    assert result["num_examples"] == 24 and result["dataset"].startswith("folder:")
    # The trained weights were restored: the centre is the run's own last test loss.
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert abs(result["centre_loss"] - last["test_loss"]) < 1e-4 * max(1.0, last["test_loss"])
    assert os.listdir(run / "tb" / "probes")                 # TensorBoard summaries
    # Resume of a complete grid evaluates nothing and gives the same numbers.
    assert analyze.main(["landscape", str(run), "--points", "5", "--batch-size", "12", "--resume",
                         "--json", "--no-tensorboard"]) == 0
    again = json.loads(capsys.readouterr().out)
    np.testing.assert_array_equal(np.array(again["landscape"]["loss"], float), loss)


def test_hessian_and_gradvar_on_a_keras_file(keras_file, tiny_folder, tmp_path, capsys):
    common = ["--dataset", f"folder:{tiny_folder}", "--max-images", "20", "--batch-size", "8",
              "--out", str(tmp_path), "--json"]
    assert analyze.main(["hessian", str(keras_file), "--top-n", "2", "--trace", "--density",
                         "--max-iter", "30", "--density-steps", "20", "--dtype", "float64"] + common) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["eigenvalues"]) == 2 and result["dtype"] == "float64"
    assert abs(result["eigenvalues"][0]) >= abs(result["eigenvalues"][1]) > 0
    assert result["trace_standard_error"] > 0 and result["num_examples"] == 20
    assert result["trace_method"] == "hutchinson" and 10 <= result["hvps_trace"] <= 100
    extremes = result["extremes"]
    # two Lanczos runs, each converged to a relative residual of 1e-3: equal within that
    top, bottom = max(result["eigenvalues"]), min(result["eigenvalues"])
    assert extremes["lambda_max"] >= top - 1e-3 * abs(top) and extremes["lambda_min"] <= bottom + 1e-3 * abs(bottom)
    assert extremes["ratio"] == pytest.approx(extremes["lambda_min"] / extremes["lambda_max"])
    assert all(r <= 1e-3 for r in result["residuals"] + list(extremes["residuals"].values()))
    assert result["eigenvalues_converged"] and extremes["converged"] and result["hvps_eigenvalues"] <= 30
    assert os.path.getsize(tmp_path / "hessian_spectrum.png") > 10_000
    assert analyze.main(["gradvar", str(keras_file), "--per-layer"] + common) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_batches"] == 3 and result["batch_size"] == 8
    assert result["mean_norm_deviation"] > 0 and len(result["layers"]) == 3
    assert json.loads((tmp_path / "gradvar.json").read_text())["num_batches"] == 3
    assert analyze.main(["landscape", str(keras_file), "--dims", "1", "--points", "3"] + common) == 0
    assert os.path.getsize(tmp_path / "landscape_curve.png") > 10_000


def test_hessian_reports_what_did_not_converge(keras_file, tiny_folder, tmp_path, capsys):
    common = [str(keras_file), "--dataset", f"folder:{tiny_folder}", "--max-images", "20", "--batch-size", "10",
              "--out", str(tmp_path), "--no-tensorboard"]
    assert analyze.main(["hessian"] + common + ["--max-iter", "3", "--top-n", "2", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["converged"] is False and result["eigenvalues_converged"] is False
    assert result["extremes"]["converged"] is False and result["extremes"]["num_hvps"] == 3
    assert len(result["residuals"]) == 2 and max(result["residuals"]) > 1e-3
    assert set(result["extremes"]["residuals"]) == {"lambda_max", "lambda_min"}
    notes = [line for line in captured.err.splitlines() if line.startswith("not converged")]
    assert len(notes) == 1 and notes[0].endswith("raise --max-iter (now 3)") and "residual" in notes[0]
    assert json.loads((tmp_path / "hessian.json").read_text())["converged"] is False
    # Text output: the eigenvalues, lambda_max, lambda_min and their ratio, each with its residual.
    assert analyze.main(["hessian"] + common + ["--trace", "--trace-method", "hutch++",
                                                "--trace-max-iter", "12", "--trace-tol", "1e-6"]) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].startswith("top 1 Hessian eigenvalue(s) (lanczos, LM,") and "(residual " in out[0]
    assert out[1].startswith("λ_max ") and "λ_min " in out[1] and "λ_min/λ_max " in out[1]
    assert out[2].startswith("trace ") and "(standard error" in out[2] and "hutch++, 12 HVPs" in out[2]
    assert captured.err.strip().splitlines()[-1].startswith("not converged: trace ")
    assert "raise --trace-max-iter (now 12)" in captured.err and "raise --max-iter" not in captured.err


@pytest.mark.parametrize("argv, message", [
    (["landscape", "/no/such/run"], "no such run directory"),
    (["hessian", "{keras}"], "pass --dataset"),
    (["landscape", "{keras}", "--dataset", "folder:{data}", "--points", "1"], "--points"),
    (["gradvar", "{keras}", "--dataset", "folder:{data}", "--split", "nosuch"], "nosuch"),
    (["hessian", "{keras}", "--dataset", "folder:{data}", "--top-n", "0"], "--top-n"),
    (["hessian", "{keras}", "--dataset", "folder:{data}", "--method", "power", "--which", "SA"], "--which LM"),
    (["hessian", "{keras}", "--dataset", "folder:{data}", "--trace-max-iter", "1"], "--trace-max-iter"),
])
def test_bad_input_is_one_line_exit_2(argv, message, keras_file, tiny_folder, tmp_path, capsys):
    argv = [a.format(keras=keras_file, data=tiny_folder) for a in argv] + ["--out", str(tmp_path)]
    assert analyze.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)
