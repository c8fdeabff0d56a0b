"""tfnas.export: the SavedModel serves raw images (and normalised ones under
``serve_normalized``) and reproduces the network and the logged accuracy."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras
import tensorflow as tf

from tfnas import data, export
from tfnas.networks import NetworkCIFAR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One separable conv per normal cell: cheap to trace.
LIGHT_GENOTYPE = {
    "normal": [["sep_conv_3x3", 0], ["skip_connect", 1], ["avg_pool_3x3", 0], ["skip_connect", 2],
               ["max_pool_3x3", 1], ["skip_connect", 3], ["skip_connect", 2], ["avg_pool_3x3", 4]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", 0], ["skip_connect", 1], ["avg_pool_3x3", 0], ["skip_connect", 2],
               ["max_pool_3x3", 1], ["skip_connect", 3], ["skip_connect", 2], ["avg_pool_3x3", 4]],
    "reduce_concat": [2, 3, 4, 5]}


def _tiny_network(info, normalized):
    """C=4, 3 layers; a random classifier centred on ``normalized`` so that the
    images get different classes (at initialisation they all get one)."""
    model = NetworkCIFAR(LIGHT_GENOTYPE, init_channels=4, layers=3, num_classes=info.num_classes)
    model.build((None, *info.image_shape))
    kernel, bias = model.classifier.trainable_weights
    kernel.assign(np.random.default_rng(0).normal(0.0, 1.0, kernel.shape).astype(np.float32))
    bias.assign(np.zeros(bias.shape, np.float32))
    bias.assign(-model(normalized).numpy().mean(0))
    return model


def _decode_folder(root, per_class=None):
    """uint8 images and class-folder names of ``root/<class>/*.png``, decoded here (not by tfnas)."""
    images, names = [], []
    for cls in sorted(os.listdir(root)):
        for f in sorted(os.listdir(os.path.join(root, cls)))[:per_class]:
            with open(os.path.join(root, cls, f), "rb") as fh:
                images.append(tf.io.decode_png(fh.read(), channels=3).numpy())
            names.append(cls)
    return np.stack(images), np.array(names)


@pytest.fixture(scope="module")
def exported(cifar_mini, tmp_path_factory):
    """Two test images per class, in a tfnas.data.ImageData (its info and
    normalisation) without decoding the whole dataset."""
    images, names = _decode_folder(cifar_mini / "test", per_class=2)
    class_names = sorted(set(names))
    labels = np.searchsorted(class_names, names).astype(np.int32)
    mean, std = data.CIFAR_STATS["cifar10"]
    source = data.ImageData("cifar10-mini", {"train": (images, labels), "test": (images, labels)},
                            class_names, mean, std)
    normalized = source.normalize(images)
    model = _tiny_network(source.info, normalized)
    export_dir = str(tmp_path_factory.mktemp("export"))
    paths = export.export_model(model, source.info, export_dir)
    return {"paths": paths, "dir": export_dir, "info": source.info, "images": images,
            "normalized": normalized, "model": model}


def test_export_writes_a_saved_model_and_a_keras_file(exported):
    assert exported["paths"] == {"saved_model": os.path.join(exported["dir"], "saved_model"),
                                 "keras_file": os.path.join(exported["dir"], "model.keras")}
    loaded = tf.saved_model.load(exported["paths"]["saved_model"])
    assert set(loaded.signatures) == {"serve", "serve_normalized", "metadata", "serving_default"}
    specs = {name: list(loaded.signatures[name].structured_input_signature[1].values())
             for name in ("serve", "serve_normalized", "serving_default")}
    assert specs["serving_default"][0].dtype == tf.uint8 == specs["serve"][0].dtype
    assert specs["serve_normalized"][0].dtype == tf.float32
    assert all(s[0].shape.as_list() == [None, 32, 32, 3] for s in specs.values())
    keras_model = keras.saving.load_model(exported["paths"]["keras_file"], compile=False)
    np.testing.assert_allclose(keras_model(exported["normalized"]).numpy(),
                               exported["model"](exported["normalized"]).numpy(), atol=1e-5)


def test_raw_images_give_the_networks_logits(exported):
    loaded = tf.saved_model.load(exported["paths"]["saved_model"])
    raw = exported["images"]
    assert raw.dtype == np.uint8
    want = exported["model"](exported["normalized"], training=False).numpy()
    outputs = {"uint8": loaded.serve(tf.constant(raw)),
               "float 0-255": loaded.serve(tf.constant(raw, tf.float32)),
               "normalized": loaded.serve_normalized(exported["normalized"]),
               "serving_default": loaded.signatures["serving_default"](images=tf.constant(raw)),
               "serve_normalized signature": loaded.signatures["serve_normalized"](
                   images=exported["normalized"])}
    names = np.array(exported["info"].class_names)
    assert len(set(np.argmax(want, -1))) > 1   # else the class checks below prove little
    for kind, out in outputs.items():
        assert set(out) == {"logits", "probabilities", "classes", "class_names"}, kind
        logits = out["logits"].numpy()
        np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5, err_msg=kind)
        shifted = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
        np.testing.assert_allclose(out["probabilities"].numpy(), shifted / shifted.sum(-1, keepdims=True),
                                   atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-6, err_msg=kind)
        assert out["classes"].dtype == tf.int32
        np.testing.assert_array_equal(out["classes"].numpy(), np.argmax(logits, -1), err_msg=kind)
        assert [n.decode() for n in out["class_names"].numpy()] == list(names[out["classes"].numpy()]), kind


def test_the_saved_model_describes_its_preprocessing(exported):
    info = exported["info"]
    assert info.class_names[:2] == ["airplane", "automobile"] and len(info.class_names) == 10
    loaded = tf.saved_model.load(exported["paths"]["saved_model"])
    meta = loaded.metadata()
    assert [n.decode() for n in meta["class_names"].numpy()] == info.class_names
    np.testing.assert_allclose(meta["mean"].numpy(), info.mean, rtol=1e-6)
    np.testing.assert_allclose(meta["std"].numpy(), info.std, rtol=1e-6)
    assert meta["image_shape"].numpy().tolist() == [32, 32, 3]
    with open(os.path.join(exported["dir"], "preprocessing.json")) as fh:
        prep = json.load(fh)
    assert prep["class_names"] == info.class_names and prep["image_shape"] == [32, 32, 3]
    assert prep["mean"] == list(info.mean) and prep["std"] == list(info.std)
    assert set(prep["endpoints"]) == {"serve", "serve_normalized", "metadata"}
    with open(os.path.join(exported["paths"]["saved_model"], "assets.extra", "preprocessing.json")) as fh:
        assert json.load(fh) == prep


def test_probe_loader_reads_logits_of_normalized_images(exported):
    from tfnas.cli.analyze_probes import load_target
    target = load_target(exported["paths"]["saved_model"])
    assert target.saved_model
    np.testing.assert_allclose(target.model(exported["normalized"]).numpy(),
                               exported["model"](exported["normalized"]).numpy(), rtol=1e-5, atol=1e-5)


def test_nameless_classes_are_named_by_their_indices():
    info = data.DatasetInfo(name="x", num_classes=3, image_shape=(32, 32, 3), num_examples={},
                            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert export.export_metadata(info)["class_names"] == ["0", "1", "2"]


def test_an_unbuilt_network_or_a_strategy_scope_is_refused(exported, tmp_path):
    unbuilt = NetworkCIFAR(LIGHT_GENOTYPE, init_channels=4, layers=3)
    with pytest.raises(export.ExportError, match="must be built"):
        export.export_model(unbuilt, exported["info"], str(tmp_path))
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        with pytest.raises(export.ExportError, match="inside a strategy.scope"):
            export.export_model(exported["model"], exported["info"], str(tmp_path))
    assert not os.listdir(tmp_path)


# -- acceptance: train.py --epochs 1, then raw test images through `serve` ----

@pytest.mark.slow
def test_one_epoch_export_reproduces_the_logged_test_accuracy_on_raw_images(cifar_mini, tmp_path):
    """A small train split (10 images per class) and the full cifar10-mini test split."""
    root = tmp_path / "data"
    for cls in sorted(os.listdir(cifar_mini / "train")):
        os.makedirs(root / "train" / cls)
        for name in sorted(os.listdir(cifar_mini / "train" / cls))[:10]:
            os.symlink(cifar_mini / "train" / cls / name, root / "train" / cls / name)
    os.symlink(cifar_mini / "test", root / "test")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), "--genotype", json.dumps(LIGHT_GENOTYPE),
         "--dataset", f"folder:{root}", "--init-channels", "4", "--layers", "3", "--epochs", "1",
         "--batch-size", "32", "--eval-batch-size", "256", "--seed", "1", "--histogram-every", "0",
         "--out", str(tmp_path / "run"), "--export-dir", str(tmp_path / "export"), "--json"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "run" / "metrics.jsonl") as fh:
        logged = [json.loads(line) for line in fh if line.strip()][-1]["test_acc"]

    images, truth = _decode_folder(cifar_mini / "test")
    # keep the loaded object: its functions hold only weak references to its variables
    loaded = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    served = loaded.serve(tf.constant(images))
    by_name = float(np.mean(served["class_names"].numpy().astype(str) == truth))
    by_index = float(np.mean(served["classes"].numpy() == np.searchsorted(np.unique(truth), truth)))
    assert by_name == by_index
    # the same images in a different batching: float rounding may flip a near tie
    assert by_name == pytest.approx(logged, abs=1 / len(images) + 1e-9)
