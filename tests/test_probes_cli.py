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
    assert os.path.getsize(tmp_path / "hessian_spectrum.png") > 10_000
    assert analyze.main(["gradvar", str(keras_file), "--per-layer"] + common) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_batches"] == 3 and result["batch_size"] == 8
    assert result["mean_norm_deviation"] > 0 and len(result["layers"]) == 3
    assert json.loads((tmp_path / "gradvar.json").read_text())["num_batches"] == 3
    assert analyze.main(["landscape", str(keras_file), "--dims", "1", "--points", "3"] + common) == 0
    assert os.path.getsize(tmp_path / "landscape_curve.png") > 10_000


@pytest.mark.parametrize("argv, message", [
    (["landscape", "/no/such/run"], "no such run directory"),
    (["hessian", "{keras}"], "pass --dataset"),
    (["landscape", "{keras}", "--dataset", "folder:{data}", "--points", "1"], "--points"),
    (["gradvar", "{keras}", "--dataset", "folder:{data}", "--split", "nosuch"], "nosuch"),
    (["hessian", "{keras}", "--dataset", "folder:{data}", "--top-n", "0"], "--top-n"),
])
def test_bad_input_is_one_line_exit_2(argv, message, keras_file, tiny_folder, tmp_path, capsys):
    argv = [a.format(keras=keras_file, data=tiny_folder) for a in argv] + ["--out", str(tmp_path)]
    assert analyze.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)
