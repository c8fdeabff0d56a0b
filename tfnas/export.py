"""Exporting a trained network: a SavedModel that serves raw images, a ``.keras`` file.

:func:`export_model` writes, under ``export_dir``:

* ``saved_model/``: a SavedModel with the endpoints (each also a signature)

  - ``serve`` (= ``serving_default``): raw images, uint8 or float32 in
    ``[0, 255]``, shape ``(batch, H, W, C)`` of the training size.  It
    applies the normalisation :mod:`tfnas.data` trains with
    (``pixel/255``, then ``(x - mean)/std`` per channel) itself.  Its
    signatures (``serve``, ``serving_default``) take uint8; the function
    ``loaded.serve`` accepts uint8 and float32.
  - ``serve_normalized``: float32 images already normalised that way.

  Both return ``{"logits": float32 (batch, classes), "probabilities":
  softmax of the logits, "classes": int32 argmax, "class_names": string
  per image}``.  A third endpoint, ``metadata`` (no inputs), returns the
  class names, mean, std and image shape as constants, and
  ``saved_model/assets.extra/preprocessing.json`` is a copy of the
  metadata file, so the SavedModel describes itself.
* ``model.keras``: the network alone (normalised input, logits).
* ``preprocessing.json``: :func:`export_metadata` (class names, mean, std,
  image shape, the endpoints).

Usage: ``loaded = tf.saved_model.load(path)`` then
``loaded.serve(uint8_images)["class_names"]``; keep ``loaded`` referenced
while calling its functions (they hold only weak references to its
variables, a TensorFlow behaviour).
"""

from __future__ import annotations

import json
import os
import shutil

SERVE = "serve"
SERVE_NORMALIZED = "serve_normalized"
METADATA = "metadata"
METADATA_FILE = "preprocessing.json"


class ExportError(ValueError):
    """A network that cannot be exported as given."""


def export_model(model, info, export_dir: str) -> dict:
    """Export ``model`` (a built :class:`tfnas.networks.NetworkCIFAR`) for
    images described by ``info`` (a :class:`tfnas.data.DatasetInfo`):
    ``{"saved_model": path, "keras_file": path}`` (see the module docstring).

    The network is rebuilt from its config and given the trained weights;
    call this outside any ``strategy.scope()`` (:class:`ExportError`
    otherwise), so that the export never contains distributed variables."""
    clone = _unreplicated_copy(model, info.image_shape)
    metadata = export_metadata(info)
    os.makedirs(export_dir, exist_ok=True)
    metadata_file = os.path.join(export_dir, METADATA_FILE)
    with open(metadata_file, "w", encoding="utf-8") as fh:
        json.dump(metadata, fh, indent=2)
    saved = os.path.join(export_dir, "saved_model")
    write_saved_model(clone, metadata, saved)
    # assets.extra: files shipped with a SavedModel that loaders leave alone
    os.makedirs(os.path.join(saved, "assets.extra"), exist_ok=True)
    shutil.copy(metadata_file, os.path.join(saved, "assets.extra", METADATA_FILE))
    keras_file = os.path.join(export_dir, "model.keras")
    clone.save(keras_file)
    return {"saved_model": saved, "keras_file": keras_file}


def export_metadata(info) -> dict:
    """What a user of the export needs to know (``preprocessing.json``)."""
    return {"mean": [float(m) for m in info.mean], "std": [float(s) for s in info.std],
            "image_shape": [int(d) for d in info.image_shape],
            "class_names": _class_names(info),
            "normalization": "(pixel/255 - mean)/std per channel",
            "endpoints": {
                SERVE: "raw uint8 or float32 [0, 255] NHWC images -> logits, probabilities, classes, "
                       "class_names (also serving_default, uint8)",
                SERVE_NORMALIZED: "float32 NHWC images normalised as above -> the same outputs",
                METADATA: "no input -> class_names, mean, std, image_shape"},
            "keras_file": "model.keras: normalised float32 NHWC images -> logits"}


def _class_names(info) -> list:
    names = [str(n) for n in info.class_names]
    # datasets without names: the class index, so the string output still exists
    return names if len(names) == int(info.num_classes) else [str(i) for i in range(int(info.num_classes))]


def write_saved_model(model, metadata: dict, path: str) -> None:
    """Save the ``serve``, ``serve_normalized`` and ``metadata`` endpoints of
    ``model`` (a built Keras model taking normalised images) to ``path``."""
    import keras

    serve, serve_normalized, describe = serving_functions(model, metadata)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also ``serving_default``; a traced tf.function's
    # first trace (uint8) becomes its signature.
    archive.add_endpoint(SERVE, serve)
    archive.add_endpoint(SERVE_NORMALIZED, serve_normalized)
    archive.add_endpoint(METADATA, describe)
    archive.write_out(path, verbose=False)


def serving_functions(model, metadata: dict):
    """``(serve, serve_normalized, metadata)`` tf.functions over ``model``,
    traced for the image shape in ``metadata`` (``serve`` for uint8 first,
    then float32)."""
    import tensorflow as tf

    h, w, c = metadata["image_shape"]
    mean = tf.constant(metadata["mean"], tf.float32)
    std = tf.constant(metadata["std"], tf.float32)
    names = tf.constant(metadata["class_names"], tf.string)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec((None, h, w, c), tf.float32, name="images")])
    def serve_normalized(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        classes = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits), "classes": classes,
                "class_names": tf.gather(names, classes)}

    @tf.function(autograph=False)
    def serve(images):
        # the same ops, in the same order, as tfnas.data's pipelines; the
        # network itself is traced once, in serve_normalized
        x = tf.cast(images, tf.float32) / 255.0
        return serve_normalized((x - mean) / std)

    @tf.function(autograph=False, input_signature=[])
    def describe():
        return {"class_names": names, "mean": mean, "std": std,
                "image_shape": tf.constant([h, w, c], tf.int32)}

    for dtype in (tf.uint8, tf.float32):
        serve.get_concrete_function(tf.TensorSpec((None, h, w, c), dtype, name="images"))
    return serve, serve_normalized, describe


def _unreplicated_copy(model, image_shape):
    import tensorflow as tf
    from tfnas.networks import NetworkCIFAR
    if tf.distribute.has_strategy():
        raise ExportError("cannot export inside a strategy.scope(): call export_model outside it")
    clone = NetworkCIFAR.from_config(model.get_config())
    clone.build((None, *[int(d) for d in image_shape]))
    shapes = [tuple(v.shape) for v in clone.weights]
    if not model.built or [tuple(v.shape) for v in model.weights] != shapes:
        # an unbuilt network would silently export the clone's random weights
        raise ExportError(f"the network to export must be built on {tuple(image_shape)} images "
                          f"(it has {len(model.weights)} weights, the export {len(shapes)})")
    for dst, src in zip(clone.weights, model.weights):
        dst.assign(_read(src))
    return clone


def _read(variable):
    import numpy as np
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
