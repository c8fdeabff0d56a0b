"""A copy of a Keras model in another float dtype (float64 for accurate curvature)."""

from __future__ import annotations

import numpy as np

from tfnas.probes.core import ProbeError

FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16")


def _retype(config, dtype):
    """Replace every float dtype / dtype policy in a serialised config."""
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and \
                isinstance(config.get("config"), dict) and config["config"].get("name") in FLOAT_NAMES:
            return {**config, "config": {**config["config"], "name": dtype}}
        out = {}
        for key, value in config.items():
            if key == "dtype" and isinstance(value, str) and value in FLOAT_NAMES:
                out[key] = dtype
            else:
                out[key] = _retype(value, dtype)
        return out
    if isinstance(config, list):
        return [_retype(v, dtype) for v in config]
    return config


def cast_model(model, dtype: str = "float64"):
    """A new model with the same architecture and weights in ``dtype``.

    Works from the model's serialised config (so custom layers must be
    registered serialisable), with the global dtype policy set to ``dtype``
    while it is rebuilt (sub-layers created in a subclassed model's
    ``__init__`` take the global policy).  Non-float variables (seed states,
    counters) keep their dtype.  The original model is untouched."""
    import keras

    if dtype not in ("float16", "bfloat16", "float32", "float64"):
        raise ProbeError(f"unsupported dtype {dtype!r}")
    config = _retype(keras.saving.serialize_keras_object(model), dtype)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        clone = keras.saving.deserialize_keras_object(config)
        if not clone.built:
            shape = getattr(model, "_build_shapes_dict", None)
            raise ProbeError(f"cannot rebuild {type(model).__name__} in {dtype} (build shapes {shape})")
    finally:
        keras.config.set_dtype_policy(previous)
    old, new = model.weights, clone.weights
    if len(old) != len(new):
        raise ProbeError(f"cast copy of {type(model).__name__} has {len(new)} weights, "
                         f"the model has {len(old)}")
    for target, source in zip(new, old):
        value = np.asarray(source.numpy())
        if tuple(target.shape) != value.shape:
            raise ProbeError(f"weight {source.path}: shape {value.shape} vs {tuple(target.shape)} in the copy")
        target.assign(value.astype(np.dtype(target.dtype)) if np.issubdtype(value.dtype, np.floating)
                      else value)
    return clone
