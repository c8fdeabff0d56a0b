"""Load a trained model from wherever training left it.

:func:`load_trained_model` takes

- a training run directory (``config.json`` + checkpoints, from
  :func:`tfnas.training.train`): the network the run's config describes
  (:meth:`tfnas.config.TrainConfig.network_spec`, the same function
  training builds it with), restored from the latest checkpoint or a given
  one; a run without a checkpoint falls back to its newest ``.keras`` file;
- a ``.keras`` file (a :class:`tfnas.networks.NetworkCIFAR` or any Keras
  model saved with the tfnas layers);
- a SavedModel directory written by :mod:`tfnas.export`: a Keras model
  over its ``serve_normalized`` endpoint (normalised images in, logits
  out; inference only: a SavedModel has no training-mode BN and no second
  derivatives).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from tfnas.config import TrainConfig
from tfnas.data import dataset_info
from tfnas.export import SERVE_NORMALIZED
from tfnas.networks import build_network
from tfnas.rundir import RunDir

__all__ = ["LoadedModel", "ModelLoadError", "load_trained_model", "run_network"]


class ModelLoadError(ValueError):
    """A path that holds no model tfnas can load."""


@dataclass
class LoadedModel:
    model: object                       # a built Keras model (logits from normalised images)
    path: str
    run_dir: str | None = None          # the training run, if the path is one
    config: dict = field(default_factory=dict)   # the run's config.json (empty otherwise)
    saved_model: bool = False           # inference only
    checkpoint: str | None = None       # the checkpoint restored (run directories)


def _first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def run_network(run_dir: str):
    """``(model, config)``: the unrestored, built network of a training run."""
    run = RunDir(run_dir, create=False)
    raw = run.read_config()
    if "method_config" in raw or "darts" in raw:
        raise ModelLoadError(f"{run_dir} is a search run: re-train its genotype with train.py "
                             f"(--genotype {os.path.join(run_dir, 'genotype.json')}) and load that")
    config = TrainConfig.from_dict(raw)
    info = dataset_info(config.dataset, config.data_dir, validation=config.validation)
    return build_network(config.network_spec(info)), raw


def _load_run(path: str, checkpoint: str | None) -> LoadedModel:
    run = RunDir(path, create=False)
    checkpoint = checkpoint or run.latest_checkpoint()
    if checkpoint is None:
        files = sorted((os.path.join(root, f) for root, _, names in os.walk(path)
                        for f in names if f.endswith(".keras")), key=os.path.getmtime)
        if not files:
            raise ModelLoadError(f"run directory {path} has no checkpoint and no .keras file yet")
        loaded = _load_keras(files[-1])
        return LoadedModel(loaded.model, path, run_dir=path, config=run.read_config())
    model, config = run_network(path)
    # The model only: a probe does not need the optimizer state.
    run.restore_checkpoint({"model": model}, path=checkpoint, partial=True)
    return LoadedModel(model, path, run_dir=path, config=config, checkpoint=checkpoint)


def _load_keras(path: str) -> LoadedModel:
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for bad files
        raise ModelLoadError(f"cannot load {path}: {_first_line(err)}") from None
    return LoadedModel(model, path)


def _load_saved_model(path: str) -> LoadedModel:
    try:
        loaded = tf.saved_model.load(path)
        signature = loaded.signatures[SERVE_NORMALIZED]
    except KeyError:
        raise ModelLoadError(f"the SavedModel {path} has no {SERVE_NORMALIZED!r} endpoint "
                             f"(exported by an older tfnas?); load its model.keras instead") from None
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the SavedModel {path}: {_first_line(err)}") from None
    spec = signature.structured_input_signature[1]
    shape = list(spec.values())[0].shape if isinstance(spec, dict) and spec else None
    if shape is None:
        raise ModelLoadError(f"cannot tell the input shape of the SavedModel {path}")
    layer = keras.layers.TFSMLayer(path, call_endpoint=SERVE_NORMALIZED, trainable=True)
    inputs = keras.Input(tuple(shape[1:]))
    model = keras.Model(inputs, layer(inputs)["logits"])
    return LoadedModel(model, path, saved_model=True)


def load_trained_model(path: str, checkpoint: str | None = None) -> LoadedModel:
    """The model at ``path`` (see the module docstring); ``checkpoint``
    picks a checkpoint directory of a run (default: its latest)."""
    path = os.path.normpath(os.path.expanduser(str(path)))
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such run directory or model file: {path}")
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return _load_run(path, checkpoint)
    if os.path.isfile(path) and path.endswith(".keras"):
        return _load_keras(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return _load_saved_model(path)
    raise ModelLoadError(f"{path} is not a run directory (config.json), a .keras file or a "
                         f"SavedModel directory")
