"""Filter-normalised loss landscapes (Li et al., NeurIPS 2018).

f(a) = L(theta + a d1) and f(a, b) = L(theta + a d1 + b d2) over a grid,
with loss and accuracy (and optionally gradient variance) at every point,
BN in inference mode, no augmentation.

Filter normalisation
--------------------
Each filter of a random Gaussian direction is rescaled to the norm of the
matching filter of the weights.  A *filter* is the slice of a kernel that
produces one output channel:

- Dense ``(in, out)`` and Conv ``(H, W, in, out)`` kernels (Keras layout):
  the filter index is the **last** axis (PyTorch's first axis).
- Transposed convs ``(H, W, out, in)``: the second-to-last axis.
- Depthwise kernels ``(H, W, C, multiplier)``: output channel ``c*M + m``
  is produced by the ``H x W`` slice ``[:, :, c, m]`` alone, so each such
  slice is a filter (normalised over H and W).  PyTorch stores the same
  kernel as ``(C*M, 1, H, W)`` and Li et al.'s code normalises each of its
  ``C*M`` slices, so this is the same rule.  A kernel is treated as
  depthwise if it belongs to a Keras ``DepthwiseConv*``/``SeparableConv*``
  layer (``kernel`` / ``depthwise_kernel``) or its path contains
  ``depthwise``.
- Vectors and scalars (biases, BN gamma/beta): direction zero with
  ``ignore="biasbn"`` (default); with ``ignore=None`` the direction is a copy
  of the weight, as in Li et al.'s code.

Evaluation
----------
The probed variables are assigned ``theta + a d1 + b d2`` by a compiled
function taking ``(a, b)`` as tensors, and the batches are evaluated by one
compiled evaluation function: both are traced once for the whole grid.  The
original weights are restored afterwards (also on error or Ctrl-C).  With
``checkpoint=PATH`` the partial grid (and the directions) are written
atomically (temporary file + rename) every ``checkpoint_seconds`` and at
the end; ``resume=True`` continues from that file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfnas.files import atomic_write
from tfnas.ops import tf_variable
from tfnas.probes.core import ModelLoss, ProbeError, as_batches, resolve_variables
from tfnas.probes.gradvar import gradient_variance

NORMALIZATIONS = ("filter", "layer", "none")
GRADVAR_KEYS = ("mean_norm_deviation", "mean_sq_deviation", "mean_gradient_norm")


# --------------------------------------------------------------- directions

def _depthwise_variable_ids(model) -> set:
    import keras
    ids = set()
    depthwise_types = tuple(t for t in (getattr(keras.layers, n, None) for n in (
        "DepthwiseConv1D", "DepthwiseConv2D")) if t is not None)
    separable_types = tuple(t for t in (getattr(keras.layers, n, None) for n in (
        "SeparableConv1D", "SeparableConv2D")) if t is not None)
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, depthwise_types) and getattr(layer, "kernel", None) is not None:
            ids.add(id(layer.kernel))
        if isinstance(layer, separable_types) and getattr(layer, "depthwise_kernel", None) is not None:
            ids.add(id(layer.depthwise_kernel))
    return ids


def _transposed_variable_ids(model) -> set:
    import keras
    types = tuple(t for t in (getattr(keras.layers, n, None) for n in (
        "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")) if t is not None)
    return {id(layer.kernel) for layer in model._flatten_layers(include_self=True, recursive=True)
            if isinstance(layer, types) and getattr(layer, "kernel", None) is not None}


def filter_axes(model, variables) -> list:
    """For each variable, the axes that index its filters (``()`` for vectors
    and scalars, which have no filters).  See the module docstring."""
    depthwise = _depthwise_variable_ids(model)
    transposed = _transposed_variable_ids(model)
    axes = []
    for v in variables:
        rank = len(v.shape)
        path = getattr(v, "path", "") or ""
        if rank <= 1:
            axes.append(())
        elif rank >= 3 and (id(v) in depthwise or "depthwise" in path.rsplit("/", 1)[-1]
                            or "depthwise" in path):
            axes.append((rank - 2, rank - 1))
        elif id(v) in transposed:
            axes.append((rank - 2,))
        else:
            axes.append((rank - 1,))
    return axes


def normalize_direction(direction, weights, axes, normalization: str = "filter",
                        ignore: str | None = "biasbn") -> list:
    """Rescale ``direction`` (list of arrays) to the scale of ``weights``.

    ``normalization``: ``"filter"`` (each filter to the norm of the matching
    weight filter), ``"layer"`` (each variable to the weight's norm) or
    ``"none"``.  ``axes``: per variable, the filter-index axes (see
    :func:`filter_axes`)."""
    if normalization not in NORMALIZATIONS:
        raise ProbeError(f"normalization must be one of {NORMALIZATIONS}, not {normalization!r}")
    if ignore not in ("biasbn", None):
        raise ProbeError(f"ignore must be 'biasbn' or None, not {ignore!r}")
    out = []
    for d, w, filter_index in zip(direction, weights, axes):
        d = np.array(d, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        if d.ndim <= 1:
            out.append(np.zeros_like(d) if ignore == "biasbn" else w.copy())
            continue
        if normalization == "filter":
            reduce_axes = tuple(a for a in range(d.ndim) if a not in filter_index)
            d_norm = np.sqrt(np.sum(d * d, axis=reduce_axes, keepdims=True))
            w_norm = np.sqrt(np.sum(w * w, axis=reduce_axes, keepdims=True))
            d = d * (w_norm / np.where(d_norm > 0, d_norm, 1.0))
        elif normalization == "layer":
            d_norm = np.linalg.norm(d)
            d = d * (np.linalg.norm(w) / d_norm if d_norm > 0 else 0.0)
        out.append(d)
    return out


def random_direction(model, variables=None, seed=0, normalization: str = "filter",
                     ignore: str | None = "biasbn") -> list:
    """A random Gaussian direction (list of float64 arrays, one per probed
    variable), normalised to the weights; see the module docstring."""
    variables = resolve_variables(model, variables)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    direction = [rng.standard_normal(tuple(v.shape)) for v in variables]
    weights = [v.numpy() for v in variables]
    return normalize_direction(direction, weights, filter_axes(model, variables), normalization, ignore)


def direction_to(model, other_model, variables=None) -> list:
    """The direction from ``model``'s weights to ``other_model``'s (same
    architecture; variables matched by position in ``trainable_variables``)."""
    variables = resolve_variables(model, variables)
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    others = other_model.trainable_variables
    if len(others) != len(model.trainable_variables):
        raise ProbeError("the other model has a different number of trainable variables")
    out = []
    for v in variables:
        if id(v) not in index:
            raise ProbeError(f"{v.path} is not trainable; direction_to pairs trainable variables")
        o = others[index[id(v)]]
        if tuple(o.shape) != tuple(v.shape):
            raise ProbeError(f"shape mismatch for {v.path}: {tuple(o.shape)} vs {tuple(v.shape)}")
        out.append(np.asarray(o.numpy(), np.float64) - np.asarray(v.numpy(), np.float64))
    return out


# ---------------------------------------------------------------- landscape

@dataclass
class Landscape:
    """A 1-D (``coords[1] is None``) or 2-D grid of losses and accuracies.

    ``loss[i]`` / ``loss[i, j]`` is the loss at ``(x[i])`` / ``(x[i], y[j])``.
    ``accuracy`` is NaN where the model is not a classifier.  ``done`` marks
    evaluated points (all True once complete)."""
    x: np.ndarray
    y: np.ndarray | None
    loss: np.ndarray
    accuracy: np.ndarray
    done: np.ndarray
    gradient_variance: dict = field(default_factory=dict)   # key -> array like loss
    meta: dict = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return 1 if self.y is None else 2

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def to_dict(self) -> dict:
        def clean(a):
            return [None if not np.isfinite(v) else float(v) for v in np.ravel(a)] if a.ndim == 1 \
                else [clean(row) for row in a]
        out = {"dims": self.dims, "x": self.x.tolist(), "y": None if self.y is None else self.y.tolist(),
               "loss": clean(self.loss), "accuracy": clean(self.accuracy), "meta": self.meta}
        if self.gradient_variance:
            out["gradient_variance"] = {k: clean(v) for k, v in self.gradient_variance.items()}
        return out


def _as_flat_directions(model_loss, directions) -> list:
    """Each direction as a flat float64 vector: lists/tuples are per-variable
    arrays, a NumPy array is already flat."""
    flat = []
    for d in directions:
        if isinstance(d, (list, tuple)):
            flat.append(model_loss.flatten(d))
        else:
            d = np.asarray(d, dtype=np.float64)
            if d.shape != (model_loss.size,):
                raise ProbeError(f"flat direction has shape {d.shape}, expected ({model_loss.size},)")
            flat.append(d)
    return flat


def _save_atomic(path, arrays: dict, meta: dict):
    with atomic_write(path, "wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)


def load_landscape(path) -> tuple:
    """(Landscape, flat directions) from a checkpoint file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise ProbeError(f"cannot read landscape file {path}: {err}") from None
    meta = json.loads(str(arrays.pop("meta")))
    y = arrays.pop("y") if "y" in arrays else None
    directions = [arrays.pop(k) for k in sorted(k for k in list(arrays) if k.startswith("direction"))]
    gv = {k[len("gv_"):]: arrays.pop(k) for k in list(arrays) if k.startswith("gv_")}
    land = Landscape(arrays["x"], y, arrays["loss"], arrays["accuracy"], arrays["done"].astype(bool),
                     gv, meta)
    return land, directions


def _grid(num_points, span, coords) -> np.ndarray:
    if coords is None:
        if int(num_points) < 2:
            raise ProbeError(f"num_points must be >= 2, not {num_points}")
        coords = np.linspace(float(span[0]), float(span[1]), int(num_points))
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 1 or coords.size < 1:
        raise ProbeError("coords must be a non-empty 1-D array")
    return coords


def _resumed(checkpoint, coords, loss, num_examples, with_gradient_variance):
    """``(Landscape, flat directions)`` of an interrupted grid, checked to
    match this call."""
    saved, saved_dirs = load_landscape(checkpoint)
    if not np.array_equal(saved.x, coords) or saved.meta.get("num_parameters") != loss.size \
            or saved.meta.get("num_examples") != num_examples \
            or bool(saved.gradient_variance) != bool(with_gradient_variance):
        raise ProbeError(f"{checkpoint} was made with a different grid, model, data or options; "
                         "remove it or drop --resume")
    return saved, saved_dirs


def _new_landscape(coords, dims, with_gradient_variance, meta) -> Landscape:
    shape = (coords.size,) * dims
    return Landscape(coords, coords.copy() if dims == 2 else None, np.full(shape, np.nan),
                     np.full(shape, np.nan), np.zeros(shape, bool),
                     {k: np.full(shape, np.nan) for k in GRADVAR_KEYS} if with_gradient_variance else {},
                     meta)


def _save_landscape(checkpoint, land: Landscape, flat_dirs) -> None:
    if checkpoint is None:
        return
    arrays = {"x": land.x, "loss": land.loss, "accuracy": land.accuracy, "done": land.done}
    if land.y is not None:
        arrays["y"] = land.y
    arrays.update({f"gv_{k}": v for k, v in land.gradient_variance.items()})
    arrays.update({f"direction{k}": d for k, d in enumerate(flat_dirs)})
    _save_atomic(checkpoint, arrays, land.meta)


class _WeightMover:
    """Moves the probed variables to ``θ + Σ step_k·d_k`` (one traced
    function) and puts ``θ`` back."""

    def __init__(self, loss: ModelLoss, flat_dirs):
        dtype, self.dims = loss.dtype, len(flat_dirs)
        self.theta = [np.array(v.numpy(), copy=True) for v in loss.variables]
        self.base = [tf.Variable(t, dtype=dtype, trainable=False) for t in self.theta]
        self.directions = [[tf.Variable(p, dtype=dtype, trainable=False) for p in loss.unflatten(d)]
                           for d in flat_dirs]
        self.targets = [tf_variable(v) for v in loss.variables]
        self.move_to = tf.function(self._move_to, input_signature=[tf.TensorSpec([self.dims], dtype)])

    def _move_to(self, step):
        for i, target in enumerate(self.targets):
            value = self.base[i]
            for k in range(self.dims):
                value = value + step[k] * self.directions[k][i]
            target.assign(value)

    def restore(self):
        for target, t in zip(self.targets, self.theta):
            target.assign(t)


def _evaluate_point(loss: ModelLoss, batches, weights, num_examples) -> tuple:
    """``(loss, accuracy or NaN)`` of the model as it stands, example-weighted."""
    point_loss, correct, classifier = 0.0, 0, True
    for w, (x, y) in zip(weights, batches):
        batch_loss, batch_correct = loss.batch_evaluate(x, y)
        point_loss += w * batch_loss
        if batch_correct is None:
            classifier = False
        else:
            correct += batch_correct
    return point_loss, (correct / num_examples if classifier else np.nan)


def loss_landscape(model, loss_fn, data, directions=None, dims: int = 2, num_points: int = 51,
                   span=(-1.0, 1.0), coords=None, variables=None, seed=0,
                   normalization: str = "filter", ignore: str | None = "biasbn",
                   with_gradient_variance: bool = False, checkpoint=None, resume: bool = False,
                   checkpoint_seconds: float = 30.0, progress=None, max_batches: int | None = None,
                   model_loss: ModelLoss | None = None) -> Landscape:
    """Evaluate the loss (and accuracy) of ``model`` around its weights.

    ``directions``: ``None`` (``dims`` random filter-normalised directions,
    seeded) or a list of one or two directions, each a list of per-variable
    arrays or a flat vector (e.g. a Hessian eigenvector from
    :class:`~tfnas.probes.HessianProbe`, or :func:`direction_to` another
    model), used as given.  ``coords``: the grid per axis (default
    ``linspace(*span, num_points)``).  ``with_gradient_variance``: also the
    gradient variance (:func:`gradient_variance`) at each point.
    ``progress(done, total)`` is called after each point.
    """
    batches = as_batches(data, max_batches)
    loss = model_loss or ModelLoss(model, loss_fn, variables, training=False)
    coords = _grid(num_points, span, coords)
    num_examples = sum(int(x.shape[0]) for x, _ in batches)
    saved = None
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        saved, directions = _resumed(checkpoint, coords, loss, num_examples, with_gradient_variance)
    if directions is None:
        if dims not in (1, 2):
            raise ProbeError(f"dims must be 1 or 2, not {dims}")
        rng = np.random.default_rng(seed)
        directions = [random_direction(model, loss.variables, rng, normalization, ignore)
                      for _ in range(dims)]
    if not 1 <= len(directions) <= 2:
        raise ProbeError("give one or two directions")
    flat_dirs = _as_flat_directions(loss, directions)
    meta = {"num_parameters": loss.size, "num_examples": num_examples, "num_batches": len(batches),
            "normalization": normalization, "ignore": ignore, "seed": seed if isinstance(seed, int) else None,
            "variables": [v.path for v in loss.variables]}
    if saved is not None:
        land = saved
        land.meta.update(meta)
    else:
        land = _new_landscape(coords, len(flat_dirs), with_gradient_variance, meta)
    mover = _WeightMover(loss, flat_dirs)
    weights = np.array([int(x.shape[0]) for x, _ in batches], np.float64) / num_examples
    total, last_save = land.done.size, time.monotonic()
    try:
        for flat_index in range(total):
            index = np.unravel_index(flat_index, land.done.shape)
            if land.done[index]:
                continue
            mover.move_to(tf.constant([coords[i] for i in index], dtype=loss.dtype))
            land.loss[index], land.accuracy[index] = _evaluate_point(loss, batches, weights, num_examples)
            if with_gradient_variance:
                stats = gradient_variance(model, loss_fn, batches, model_loss=loss)
                for k in GRADVAR_KEYS:
                    land.gradient_variance[k][index] = stats[k]
            land.done[index] = True
            if progress is not None:
                progress(int(land.done.sum()), total)
            if checkpoint is not None and time.monotonic() - last_save >= checkpoint_seconds:
                _save_landscape(checkpoint, land, flat_dirs)
                last_save = time.monotonic()
    finally:
        mover.restore()
        _save_landscape(checkpoint, land, flat_dirs)
    land.meta["tracing_counts"] = {"move": mover.move_to.experimental_get_tracing_count(),
                                   **loss.tracing_counts}
    return land
