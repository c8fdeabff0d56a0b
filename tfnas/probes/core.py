"""The loss of a Keras model as a function of (a subset of) its variables.

:class:`ModelLoss` compiles, once, the three functions every probe needs —
the mean loss of a batch, its gradient and its Hessian-vector product — as
``tf.function``\\ s with a batch-size-agnostic input signature, so they are
traced once and reused for every batch, vector and grid point.

Vectors cross the TensorFlow/NumPy boundary *flat*: one float64 NumPy array
of all selected parameters in the order of ``ModelLoss.variables``
(:meth:`flatten` / :meth:`unflatten` convert).  The eigen-solvers work on
such vectors with plain NumPy.

A probe never changes the model.  In inference mode (the default) nothing is
written.  In training mode Keras's BatchNormalization updates its moving
statistics (and dropout advances its seed state); the compiled functions
read every non-trainable variable before the forward pass and assign the
values back after it, inside the same graph, so the model's state is the
same after every call.  (Side effect, wanted: dropout masks repeat across
calls, so the probed operator is a fixed function.)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnas.ops import deterministic_second_derivatives, tf_variable

HVP_MODES = ("forward_over_back", "back_over_back")


class ProbeError(ValueError):
    """Bad arguments to a probe (wrong variables, empty data, ...)."""


class ProbeWarning(UserWarning):
    """A probe's result missed its tolerance (an eigenpair's residual, a
    trace's standard error): the message names the value, its error and the
    parameter to raise."""


# --------------------------------------------------------------------- data

def as_batches(data, max_batches: int | None = None) -> list:
    """Materialise ``data`` as a list of ``(x, y)`` eager tensors.

    ``data`` is a ``tf.data.Dataset`` of ``(x, y)`` batches (extra tuple
    elements, e.g. sample weights, are dropped), an iterable of such pairs,
    or a single ``(x, y)`` pair of arrays (one batch).  Probes iterate the
    data many times (one pass per Hessian-vector product, per grid point), so
    the batches are kept in memory: it is much faster than re-decoding
    images, and it freezes the order and content of a shuffled or augmented
    pipeline, which the eigen-solvers and the two-pass gradient variance
    need (they assume the same function every pass).
    """
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple) \
            and hasattr(data[0], "shape") and hasattr(data[1], "shape"):
        batches = [(tf.convert_to_tensor(data[0]), tf.convert_to_tensor(data[1]))]
    else:
        batches = []
        for element in data:
            if not isinstance(element, (tuple, list)) or len(element) < 2:
                raise ProbeError("data must yield (x, y) batches")
            batches.append((tf.convert_to_tensor(element[0]), tf.convert_to_tensor(element[1])))
            if max_batches is not None and len(batches) >= max_batches:
                break
    if not batches:
        raise ProbeError("data is empty: no (x, y) batch to probe")
    return batches


def _batch_spec(tensor) -> tf.TensorSpec:
    return tf.TensorSpec([None] + list(tensor.shape[1:]), tensor.dtype)


# ---------------------------------------------------------------- variables

def resolve_variables(model, variables=None) -> list:
    """The variables a probe differentiates: all trainable ones, or a subset.

    ``variables`` may be Keras variables of ``model``, layers of ``model``
    (their trainable variables), or variable paths (``v.path`` strings).
    """
    if not model.built:
        raise ProbeError("the model is not built: call it on a batch first")
    if variables is None:
        chosen = list(model.trainable_variables)
    else:
        if not isinstance(variables, (list, tuple)):
            variables = [variables]
        by_path = {v.path: v for v in model.variables}
        chosen = []
        for item in variables:
            if isinstance(item, str):
                if item not in by_path:
                    raise ProbeError(f"model has no variable {item!r}")
                chosen.append(by_path[item])
            elif hasattr(item, "trainable_variables") and not hasattr(item, "assign"):
                chosen.extend(item.trainable_variables)
            else:
                chosen.append(item)
        owned = {id(v) for v in model.variables}
        for v in chosen:
            if id(v) not in owned:
                raise ProbeError(f"variable {getattr(v, 'path', v)!r} does not belong to the model")
    if not chosen:
        raise ProbeError("no variables to probe (the model has no trainable variables?)")
    dtypes = {tf.as_dtype(v.dtype) for v in chosen}
    if len(dtypes) > 1:
        raise ProbeError(f"probed variables mix dtypes {sorted(d.name for d in dtypes)}")
    if not dtypes.pop().is_floating:
        raise ProbeError("probed variables must be floating point")
    return chosen


def loss_in_dtype(loss_fn, dtype):
    """``loss_fn``, computing in ``dtype`` if it is a Keras ``Loss`` object.

    A Keras ``Loss`` casts its inputs to its own dtype (floatx, float32, by
    default): a float64 probe through it would silently get float32
    curvature (measured: 1e-8 relative error of float64 HVPs).  So a copy
    of the loss with the probe's dtype is used instead."""
    import keras
    if isinstance(loss_fn, keras.losses.Loss) and getattr(loss_fn, "dtype", None) != dtype.name:
        try:
            return type(loss_fn).from_config({**loss_fn.get_config(), "dtype": dtype.name})
        except (TypeError, ValueError, NotImplementedError):  # custom Loss without dtype support
            return loss_fn
    return loss_fn


def snapshot(model) -> list:
    """Copies (NumPy) of all model variables, to check a probe left them alone."""
    return [np.array(v.numpy(), copy=True) for v in model.variables]


# -------------------------------------------------------------- model loss

class ModelLoss:
    """Mean loss of ``model`` on a batch, its gradient and Hessian-vector
    products with respect to ``variables``, as compiled functions.

    ``hvp_mode``: ``"back_over_back"`` (default: nested GradientTapes; on
    NetworkCIFAR measured cheaper, see docs/benchmarks.md) or
    ``"forward_over_back"`` (``tf.autodiff.ForwardAccumulator`` over the
    gradient); both exact, both compiled.

    ``loss_fn(y_true, y_pred)`` follows the Keras convention; its output
    (per-example or already reduced) is averaged over the batch.  Over
    several batches, values are weighted by batch size, i.e. they are those
    of the mean loss over all examples.  Only the data loss is probed
    (``model.losses`` regularisers are not added).
    """

    def __init__(self, model, loss_fn, variables=None, training: bool = False,
                 hvp_mode: str = "back_over_back", accuracy="auto"):
        if hvp_mode not in HVP_MODES:
            raise ProbeError(f"hvp_mode must be one of {HVP_MODES}, not {hvp_mode!r}")
        if not callable(loss_fn):
            raise ProbeError("loss_fn must be callable as loss_fn(y_true, y_pred)")
        self.model = model
        self.training = bool(training)
        self.hvp_mode = hvp_mode
        self.accuracy = accuracy       # "auto", True (also one-hot float labels) or False
        self.variables = resolve_variables(model, variables)
        self.dtype = tf.as_dtype(self.variables[0].dtype)
        self.loss_fn = loss_in_dtype(loss_fn, self.dtype)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.size = int(self.offsets[-1])
        self._state = list(model.non_trainable_variables) if self.training else []
        self._loss_fn = self._gradient_fn = self._hvp_fn = self._evaluate_fn = None
        self.num_hvps = 0          # Hessian-vector products computed (per batch)
        self.num_gradients = 0

    # ---- flat vectors <-> per-variable arrays
    def flatten(self, arrays) -> np.ndarray:
        if len(arrays) != len(self.variables):
            raise ProbeError(f"expected {len(self.variables)} arrays, got {len(arrays)}")
        parts = []
        for a, shape in zip(arrays, self.shapes):
            a = np.asarray(a, dtype=np.float64)
            if a.shape != shape:
                raise ProbeError(f"array of shape {a.shape} does not match variable shape {shape}")
            parts.append(a.ravel())
        return np.concatenate(parts) if parts else np.zeros(0)

    def unflatten(self, flat) -> list:
        flat = np.asarray(flat, dtype=np.float64)
        if flat.shape != (self.size,):
            raise ProbeError(f"flat vector has shape {flat.shape}, expected ({self.size},)")
        return [flat[a:b].reshape(s) for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def parameters(self) -> np.ndarray:
        """Current values of the probed variables, flat."""
        return self.flatten([v.numpy() for v in self.variables])

    # ---- graph pieces (traced inside tf.function only)
    def _batch_loss(self, x, y):
        if x.dtype.is_floating and x.dtype != self.dtype:
            x = tf.cast(x, self.dtype)
        saved = [tf.identity(tf_variable(v).read_value()) for v in self._state]
        y_pred = self.model(x, training=self.training)
        if isinstance(y_pred, (tuple, list)):  # e.g. (logits, aux_logits): probe the main output
            y_pred = y_pred[0]
        if y.dtype.is_floating and y.dtype != y_pred.dtype:
            y = tf.cast(y, y_pred.dtype)
        loss = tf.reduce_mean(self.loss_fn(y, y_pred))
        if saved:
            # Undo BN moving-statistic / seed updates made by the call; automatic
            # control dependencies order these writes after the model's own.
            with tf.control_dependencies([loss]):
                for v, value in zip(self._state, saved):
                    tf_variable(v).assign(value)
        return tf.cast(loss, self.dtype)

    def _evaluate_graph(self, x, y):
        """(mean loss, number of correct top-1 predictions or -1) of a batch."""
        if x.dtype.is_floating and x.dtype != self.dtype:
            x = tf.cast(x, self.dtype)
        y_pred = self.model(x, training=False)
        if isinstance(y_pred, (tuple, list)):
            y_pred = y_pred[0]
        y_loss = tf.cast(y, y_pred.dtype) if y.dtype.is_floating and y.dtype != y_pred.dtype else y
        loss = tf.cast(tf.reduce_mean(self.loss_fn(y_loss, y_pred)), self.dtype)
        # Top-1 accuracy for classifier outputs (batch, classes > 1), decided at
        # trace time: integer labels always; float labels of the output's shape
        # (one-hot) only with accuracy=True (they may as well be regression targets).
        classifier = y_pred.shape.rank == 2 and (y_pred.shape[-1] or 0) > 1 and self.accuracy is not False
        one_hot = y.shape.rank == 2 and y.shape[-1] == y_pred.shape[-1]
        if classifier and (one_hot and self.accuracy is True or y.dtype.is_integer and not one_hot):
            predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int64)
            if one_hot:
                labels = tf.argmax(y, axis=-1, output_type=tf.int64)
            else:
                labels = tf.cast(tf.reshape(y, [-1]), tf.int64)
            correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.int64))
        else:
            correct = tf.constant(-1, tf.int64)
        return loss, correct

    def _split(self, flat):
        pieces = tf.split(flat, self.sizes) if len(self.sizes) > 1 else [flat]
        return [tf.reshape(p, s) for p, s in zip(pieces, self.shapes)]

    @staticmethod
    def _concat(tensors):
        return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)

    def _gradient_graph(self, x, y):
        primals = [tf_variable(v) for v in self.variables]
        with tf.GradientTape() as tape:
            tape.watch(primals)
            loss = self._batch_loss(x, y)
        grads = tape.gradient(loss, primals, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return loss, self._concat(grads)

    def _hvp_graph(self, x, y, flat_vector):
        primals = [tf_variable(v) for v in self.variables]
        tangents = self._split(flat_vector)
        zero = tf.UnconnectedGradients.ZERO
        if self.hvp_mode == "forward_over_back":
            with tf.autodiff.ForwardAccumulator(primals, tangents) as acc:
                with tf.GradientTape() as tape:
                    tape.watch(primals)
                    with deterministic_second_derivatives(self.model):
                        loss = self._batch_loss(x, y)
                grads = tape.gradient(loss, primals, unconnected_gradients=zero)
            hvp = acc.jvp(grads, unconnected_gradients=zero)
        else:
            with tf.GradientTape() as outer:
                outer.watch(primals)
                with tf.GradientTape() as inner:
                    inner.watch(primals)
                    with deterministic_second_derivatives(self.model):
                        loss = self._batch_loss(x, y)
                grads = inner.gradient(loss, primals, unconnected_gradients=zero)
                grad_dot_vector = tf.add_n([tf.reduce_sum(g * t) for g, t in zip(grads, tangents)])
            hvp = outer.gradient(grad_dot_vector, primals, unconnected_gradients=zero)
        return loss, self._concat(hvp)

    def _compile(self, x, y):
        specs = (_batch_spec(x), _batch_spec(y))
        vec = tf.TensorSpec([self.size], self.dtype)
        self._loss_fn = tf.function(self._batch_loss, input_signature=specs)
        self._gradient_fn = tf.function(self._gradient_graph, input_signature=specs)
        self._hvp_fn = tf.function(self._hvp_graph, input_signature=specs + (vec,))
        self._evaluate_fn = tf.function(self._evaluate_graph, input_signature=specs)

    def _ensure_compiled(self, x, y):
        if self._hvp_fn is None:
            self._compile(x, y)

    @property
    def tracing_counts(self) -> dict:
        """How often each compiled function was traced (1 each once used)."""
        out = {}
        for name in ("loss", "gradient", "hvp", "evaluate"):
            fn = getattr(self, f"_{name}_fn")
            out[name] = 0 if fn is None else fn.experimental_get_tracing_count()
        return out

    # ---- per batch (NumPy results, float64)
    def batch_loss(self, x, y) -> float:
        self._ensure_compiled(x, y)
        return float(self._loss_fn(x, y))

    def batch_evaluate(self, x, y):
        """(mean loss, correct predictions or None) of one batch, BN in inference mode."""
        self._ensure_compiled(x, y)
        loss, correct = self._evaluate_fn(x, y)
        correct = int(correct)
        return float(loss), (None if correct < 0 else correct)

    def batch_gradient(self, x, y):
        """(loss, flat gradient) of the mean loss of one batch."""
        self._ensure_compiled(x, y)
        loss, grad = self._gradient_fn(x, y)
        self.num_gradients += 1
        return float(loss), grad.numpy().astype(np.float64)

    def batch_hvp(self, x, y, vector) -> np.ndarray:
        """Hessian of the mean loss of one batch times ``vector`` (flat)."""
        self._ensure_compiled(x, y)
        vector = np.asarray(vector)
        if vector.shape != (self.size,):
            raise ProbeError(f"vector has shape {vector.shape}, expected ({self.size},)")
        _, hvp = self._hvp_fn(x, y, tf.constant(vector, dtype=self.dtype))
        self.num_hvps += 1
        return hvp.numpy().astype(np.float64)

    # ---- over a list of batches (weighted by batch size)
    @staticmethod
    def _weights(batches):
        counts = np.array([int(x.shape[0]) for x, _ in batches], dtype=np.float64)
        return counts / counts.sum()

    def loss(self, batches) -> float:
        return float(sum(w * self.batch_loss(x, y) for w, (x, y) in zip(self._weights(batches), batches)))

    def gradient(self, batches) -> np.ndarray:
        total = np.zeros(self.size)
        for w, (x, y) in zip(self._weights(batches), batches):
            total += w * self.batch_gradient(x, y)[1]
        return total

    def hvp(self, batches, vector) -> np.ndarray:
        total = np.zeros(self.size)
        for w, (x, y) in zip(self._weights(batches), batches):
            total += w * self.batch_hvp(x, y, vector)
        return total
