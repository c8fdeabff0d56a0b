"""Candidate operations of the DARTS/NASNet cell spaces as Keras layers.

Every layer is NHWC, serialisable (``get_config`` + registered under the
``tfnas`` package) and builds its sub-layers in ``build`` so that a reloaded
``.keras`` file restores every weight without warnings.

Padding follows the PyTorch reference (``padding = k // 2 * dilation`` on
both sides).  TensorFlow's ``'same'`` is identical to that at stride 1 for odd
kernels, so stride-1 layers use it; at stride 2 it pads asymmetrically, so
strided layers pad explicitly and convolve with ``'valid'``.

Where a CPU-tuned kernel exists (:mod:`tfnas.kernels`), a layer's
``kernels`` setting (``"auto"``, ``"cpu"`` or ``"standard"``, in its config)
chooses it; :func:`kernel_policy` resolves ``"auto"`` for the device.

:class:`BatchNorm` is the one normalisation layer of tfnas (see its
docstring for the fused and the differentiable path).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tfnas.kernels import KERNEL_CHOICES, KernelPolicy, check_kernels, resolve_kernels  # noqa: F401
from tfnas.operations import OPERATIONS, operation_parameter_count, operation_spec  # noqa: F401

__all__ = [
    "BatchNorm", "PointwiseConv2D", "ReLUConvBN", "FactorizedReduce", "SepConv", "DilConv", "Pool",
    "Zero", "Identity", "Conv7x1_1x7", "max_pool_3x3", "OPERATIONS", "LAYER_FACTORIES", "make_operation",
    "set_batch_norm_fused", "layers_of_type", "batch_norm_layers", "batch_statistics_frozen",
    "deterministic_second_derivatives", "operation_parameter_count", "conv_initializer",
    "pad_symmetric", "tf_variable", "depthwise_conv2d", "kernel_policy", "device_type",
]

_register = keras.saving.register_keras_serializable(package="tfnas")

# Reference initialisation: PyTorch's default conv init is kaiming_uniform
# with a=sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) = VarianceScaling
# (1/3, fan_in, uniform).  Keras' glorot_uniform would also train; we keep the
# reference's so that learning-rate settings transfer.
def conv_initializer():
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def tf_variable(variable):
    """The ``tf.Variable`` behind a Keras variable (or the variable itself)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def device_type() -> str:
    """``"GPU"`` when TensorFlow sees a GPU (it places the layers there), else ``"CPU"``."""
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def kernel_policy(kernels: str = "auto") -> KernelPolicy:
    """The :class:`tfnas.kernels.KernelPolicy` of a ``kernels`` setting on this
    machine's device (called when a layer is traced)."""
    return resolve_kernels(kernels, device_type())


def pad_symmetric(x, pad_h, pad_w=None, value=0.0):
    """Symmetric spatial zero (or ``value``) padding of an NHWC tensor."""
    pad_w = pad_h if pad_w is None else pad_w
    if pad_h == 0 and pad_w == 0:
        return x
    return tf.pad(x, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]], constant_values=value)


def _out_size(n, kernel, stride, pad, dilation=1):
    """Spatial output size of a PyTorch-style padded convolution/pool."""
    if n is None:
        return None
    return (n + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


# --------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------

_FUSED_DTYPES = ("float32", "float16", "bfloat16")


def _graph_constant(value: float, length: int):
    """A float32 vector of ``length`` times ``value``, one node per traced
    graph instead of one per BN (thousands in a search pass; every node costs
    trace time).  Kept on the graph itself, so it goes with the graph."""
    if tf.executing_eagerly():
        return tf.fill((length,), tf.constant(value, tf.float32))
    graph = tf.compat.v1.get_default_graph()
    if not hasattr(graph, "_tfnas_constants"):
        graph._tfnas_constants = {}
    key = (float(value), int(length))
    if key not in graph._tfnas_constants:
        # Made outside any control_dependencies block: a shared node must not
        # carry the dependencies of the place that happened to create it.
        with tf.control_dependencies(None):
            graph._tfnas_constants[key] = tf.constant(value, tf.float32, shape=(length,))
    return graph._tfnas_constants[key]


@_register
class BatchNorm(keras.layers.Layer):
    """Batch normalisation over the channel (last) axis, PyTorch semantics.

    ``momentum=0.9`` is PyTorch's ``momentum=0.1`` (moving = 0.9·moving +
    0.1·batch), ``epsilon=1e-5``, and the moving variance is updated with the
    unbiased batch variance (``n/(n-1)``) as PyTorch does; normalisation in
    training uses the biased batch variance (as both frameworks do).
    ``affine=False`` has no γ/β (the DARTS search network's BN).

    Two training-mode paths compute the same function:

    * **fused** — ``tf.nn.fused_batch_norm`` forward and its fused gradient
      kernel: the faster path on CPU (docs/benchmarks.md, Layers).  Used when
      ``fused=True``, or when ``fused=None`` (default) and the compute dtype
      is float32/float16/bfloat16.  Its gradients are float32-accurate and
      TensorFlow's registered gradient of the fused gradient kernel is exact,
      so nested-tape second derivatives (HVPs, second-order DARTS) are right
      too (both tested against float64).
    * **differentiable** — ``mean``, ``mean((x - mean)^2)`` and the affine map
      as plain TF ops, differentiable to any order.  Used when ``fused=False``
      and always under a float64 policy (the fused kernel has no float64).
      Its float32 forward is more precise than the fused kernel's, so use it
      where float32 results are compared with float64.

    Unlike Keras' own BatchNormalization, whose batch variance stops the
    gradient through the mean (right first derivatives, wrong second
    derivatives), both paths differentiate the variance through the mean.
    :func:`set_batch_norm_fused` switches every BN of a model.

    Inference mode is the affine map with the moving statistics (plain ops,
    differentiable) on both paths.

    Under mixed precision (float16/bfloat16 inputs) the statistics and the
    affine map are computed in float32 and the output is cast back; the
    variables are float32 under every policy.
    """

    def __init__(self, affine=True, momentum=0.9, epsilon=1e-5, fused=None,
                 unbiased_moving_variance=True, **kwargs):
        super().__init__(**kwargs)
        self.affine = bool(affine)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        if fused not in (None, True, False):
            raise ValueError(f"BatchNorm: fused must be None, True or False, got {fused!r}")
        self.fused = fused
        self.unbiased_moving_variance = bool(unbiased_moving_variance)
        self.supports_masking = True
        # Trace-time switch (not configuration): see batch_statistics_frozen.
        self.update_statistics = True

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("BatchNorm: the channel dimension must be known")
        shape = (int(channels),)
        if self.affine:
            self.gamma = self.add_weight(shape=shape, name="gamma", initializer="ones", autocast=False)
            self.beta = self.add_weight(shape=shape, name="beta", initializer="zeros", autocast=False)
        else:
            self.gamma = self.beta = None
        # "mean" aggregation: under tf.distribute each replica's update is averaged.
        self.moving_mean = self.add_weight(shape=shape, name="moving_mean", initializer="zeros",
                                           trainable=False, autocast=False, aggregation="mean")
        self.moving_variance = self.add_weight(shape=shape, name="moving_variance", initializer="ones",
                                               trainable=False, autocast=False, aggregation="mean")
        if self.fused and self.compute_dtype not in _FUSED_DTYPES:
            raise ValueError(f"BatchNorm: fused=True needs a float32/16 compute dtype, got {self.compute_dtype}")

    def uses_fused(self, training=True) -> bool:
        """Whether a call in this mode takes the fused path."""
        if not training or self.fused is False:
            return False
        return self.compute_dtype in _FUSED_DTYPES

    def call(self, inputs, training=False):
        x = inputs
        if x.dtype in (tf.float16, tf.bfloat16) and not self.uses_fused(training):
            # Mixed precision: statistics and the affine map in float32 (the
            # fused kernel computes them in float32 itself), as Keras' BN.
            return tf.cast(self.call(tf.cast(x, tf.float32), training), x.dtype)
        if not training:
            return self._inference(x)
        if self.uses_fused(True):
            if self.update_statistics and self.unbiased_moving_variance:
                # The kernel updates the moving statistics itself (PyTorch's
                # rule, Bessel-corrected variance): no update ops in the graph.
                y, mean, variance = self._fused_training(
                    x, (tf.convert_to_tensor(self.moving_mean), tf.convert_to_tensor(self.moving_variance)))
                self.moving_mean.assign(mean)
                self.moving_variance.assign(variance)
                return y
            y, mean, variance = self._fused_training(x)
            unbiased = variance  # FusedBatchNormV3 returns the Bessel-corrected variance
            if not self.unbiased_moving_variance:
                n = self._count(x)
                unbiased = variance * ((n - 1.0) / n)
        else:
            y, mean, variance = self._differentiable_training(x)
            unbiased = variance
            if self.unbiased_moving_variance:
                n = self._count(x, dtype=variance.dtype)
                unbiased = variance * (n / tf.maximum(n - 1.0, 1.0))
        if self.update_statistics:
            self._update_moving(mean, unbiased)
        return y

    # -- paths ---------------------------------------------------------------
    def _count(self, x, dtype=tf.float32):
        shape = tf.shape(x)
        return tf.cast(shape[0] * shape[1] * shape[2], dtype)

    def _inference(self, x):
        dtype = x.dtype
        inv = tf.math.rsqrt(tf.cast(self.moving_variance, dtype) + tf.cast(self.epsilon, dtype))
        if self.affine:
            inv = inv * tf.cast(self.gamma, dtype)
        shift = -tf.cast(self.moving_mean, dtype) * inv
        if self.affine:
            shift = shift + tf.cast(self.beta, dtype)
        return x * inv + shift

    def _fused_training(self, x, moving=None):
        """``(y, batch mean, batch variance)``; given ``moving`` (the moving
        mean and variance), the updated moving statistics in place of the
        batch's."""
        channels = x.shape[-1]
        if self.affine:
            scale, offset = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        else:
            scale, offset = _graph_constant(1.0, channels), _graph_constant(0.0, channels)
        if moving is None:
            moving, factor = (_graph_constant(0.0, 0),) * 2, 1.0
        else:
            factor = 1.0 - self.momentum
        # The raw op, without tf.nn.fused_batch_norm's conversions (trace
        # time, for ~900 BNs per search pass).  Version 1 in float32: its
        # unused outputs need no zero gradients on the tape (version 3's get
        # five zero tensors per BN), and it has the same kernels.
        fused = tf.raw_ops.FusedBatchNorm if x.dtype == tf.float32 else tf.raw_ops.FusedBatchNormV3
        outputs = fused(x=x, scale=scale, offset=offset, mean=moving[0], variance=moving[1],
                        epsilon=self.epsilon, exponential_avg_factor=factor, data_format="NHWC",
                        is_training=True)
        return outputs[0], outputs[1], outputs[2]

    def _differentiable_training(self, x):
        axes = list(range(len(x.shape) - 1))
        mean = tf.reduce_mean(x, axis=axes)
        centred = x - mean
        variance = tf.reduce_mean(tf.square(centred), axis=axes)
        inv = tf.math.rsqrt(variance + tf.cast(self.epsilon, x.dtype))
        if self.affine:
            inv = inv * tf.cast(self.gamma, x.dtype)
        y = centred * inv
        if self.affine:
            y = y + tf.cast(self.beta, x.dtype)
        return y, mean, variance

    def _update_moving(self, mean, variance):
        m = self.momentum
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            batch = tf.stop_gradient(tf.cast(batch, moving.dtype))
            # One read as a tensor: arithmetic on the Keras variable itself
            # costs several times the trace time.
            moving.assign(tf.convert_to_tensor(moving) * m + batch * (1.0 - m))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(affine=self.affine, momentum=self.momentum, epsilon=self.epsilon,
                      fused=self.fused, unbiased_moving_variance=self.unbiased_moving_variance)
        return config


def layers_of_type(model, cls):
    """Every layer of type ``cls`` inside ``model`` (a layer or model, itself included)."""
    layers = [model] if isinstance(model, cls) else []
    if hasattr(model, "_flatten_layers"):
        inner = list(model._flatten_layers(include_self=False, recursive=True))
        layers += [l for l in inner if isinstance(l, cls)]
        # Layers a layer holds out of tracking (an EdgeStack's template) count too.
        for layer in [model, *inner]:
            for hidden in getattr(layer, "untracked_layers", ()):
                layers += layers_of_type(hidden, cls)
    return layers


def batch_norm_layers(model):
    """Every :class:`BatchNorm` inside ``model`` (a layer or model)."""
    return layers_of_type(model, BatchNorm)


@contextlib.contextmanager
def _layers_switched(layers, attribute, value):
    """Set a trace-time switch on ``layers`` within the block, then restore it."""
    saved = [getattr(layer, attribute) for layer in layers]
    for layer in layers:
        setattr(layer, attribute, value)
    try:
        yield
    finally:
        for layer, old in zip(layers, saved):
            setattr(layer, attribute, old)


def batch_statistics_frozen(model):
    """Within the block, training-mode calls of every :class:`BatchNorm` in
    ``model`` normalise with the batch statistics but do not update the moving
    ones.  For passes whose state writes would be thrown away (the exact
    DARTS hypergradient's two passes): ~15 fewer graph ops per BN to trace.
    Applies to what is traced inside the block."""
    return _layers_switched(batch_norm_layers(model), "update_statistics", False)


def deterministic_second_derivatives(model):
    """Within the block, every max :class:`Pool` in ``model`` traces
    :func:`max_pool_3x3` with right and deterministic derivatives of every
    order.  For code that takes second derivatives (HVPs, the exact DARTS
    hypergradient); first-order code keeps TensorFlow's faster plain
    pooling.  Applies to what is traced inside the block."""
    return _layers_switched(layers_of_type(model, Pool), "deterministic_second_derivatives", True)


def set_batch_norm_fused(model, fused):
    """Set ``fused`` (None/True/False) on every :class:`BatchNorm` in
    ``model``; returns how many layers changed.  Re-trace any tf.function
    that already called the model (the path is chosen at trace time)."""
    if fused not in (None, True, False):
        raise ValueError(f"fused must be None, True or False, got {fused!r}")
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.fused = fused
    return len(layers)


# --------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------

@_register
class PointwiseConv2D(keras.layers.Conv2D):
    """A 1x1, stride-1, bias-free Conv2D computed as one matrix product.

    Same kernel shape (1, 1, C_in, C_out) and serialisation as Conv2D, but
    ``matmul`` on the (N·H·W, C_in) view: on CPU its forward and filter
    gradient are at least as fast as oneDNN's 1x1 convolution
    (docs/benchmarks.md).  With the ``standard`` kernel policy it is
    Conv2D's own convolution."""

    def __init__(self, filters, kernels="auto", **kwargs):
        kwargs.update(kernel_size=1, strides=1, padding="valid", use_bias=False)
        kwargs.pop("dilation_rate", None)
        super().__init__(filters, **kwargs)
        self.kernels = check_kernels(kernels)

    def call(self, inputs):
        if not kernel_policy(self.kernels).pointwise_matmul:
            return super().call(inputs)
        kernel = tf.reshape(self.kernel, (self.kernel.shape[2], self.filters))
        flat = tf.matmul(tf.reshape(inputs, (-1, inputs.shape[-1])), tf.cast(kernel, inputs.dtype))
        h, w = inputs.shape[1], inputs.shape[2]
        if h is not None and w is not None:  # static shape: 2 fewer graph ops per call
            return tf.reshape(flat, (-1, h, w, self.filters))
        shape = tf.shape(inputs)
        return tf.reshape(flat, tf.concat([shape[:3], [self.filters]], axis=0))

    def get_config(self):
        config = super().get_config()
        for key in ("kernel_size", "strides", "padding", "use_bias", "dilation_rate"):
            config.pop(key, None)
        config["kernels"] = self.kernels
        return config


def _depthwise_filter_gradient(x, dy, kernel_size, padding):
    """The filter gradient of a stride-1, undilated depthwise convolution
    (channel multiplier 1), ``dk[i, j, c] = Σ_{b,h,w} x[b, h+i, w+j, c]·dy[b, h, w, c]``,
    as one depthwise convolution of the input by the output gradient with
    the batch folded into the channels (then summed out)."""
    kh, kw = kernel_size
    if padding == "SAME":  # stride 1: pad k-1 in total, the extra pixel after
        x = tf.pad(x, [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]])
    # Static sizes where known: the dynamic ones cost ~20 graph ops per call
    # (shape slices and stacks), and the search network traces ~200 calls.
    batch, height, width, channels = _sizes(x)
    _, dy_height, dy_width, _ = _sizes(dy)
    image = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), _shape([1, height, width, batch * channels]))
    window = tf.reshape(tf.transpose(dy, [1, 2, 0, 3]),
                        _shape([dy_height, dy_width, batch * channels, 1]))
    products = tf.raw_ops.DepthwiseConv2dNative(input=image, filter=window, strides=[1, 1, 1, 1],
                                                padding="VALID")  # (1, kh, kw, B·C)
    summed = tf.reduce_sum(tf.reshape(products, _shape([kh, kw, batch, channels])), axis=2)
    return summed[..., None]


def _sizes(x) -> list:
    """The sizes of ``x``'s axes: Python ints where static, scalar tensors
    where not."""
    static = x.shape.as_list()
    if None not in static:
        return static
    dynamic = tf.shape(x)
    return [n if n is not None else dynamic[i] for i, n in enumerate(static)]


def _shape(sizes):
    """A shape argument from :func:`_sizes` values (a list if all static)."""
    return sizes if all(isinstance(n, int) for n in sizes) else tf.stack(sizes)


def _depthwise_conv_fast_filter_gradient(x, kernel, padding):
    @tf.custom_gradient
    def conv(x, kernel):
        def gradient(dy):
            dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
                input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, strides=[1, 1, 1, 1],
                padding=padding)
            return dx, _depthwise_filter_gradient(x, dy, kernel.shape[:2], padding)
        y = tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel, strides=[1, 1, 1, 1],
                                             padding=padding)
        return y, gradient
    return conv(x, kernel)


@_register
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """Keras' DepthwiseConv2D with a faster filter gradient for 5×5 and
    larger kernels at stride 1 (sep_conv_5x5, dil_conv_5x5).

    TensorFlow's CPU kernel for that gradient (oneDNN) is slower, for 5×5
    and larger kernels at stride 1, than one depthwise convolution of the
    input by the output gradient (:func:`_depthwise_filter_gradient`), and it
    was the search networks' costliest op (docs/benchmarks.md).  TensorFlow's
    kernel is kept where it is faster (3×3) or where this one does not apply:
    strides, channel multipliers, biases, and half precision (this one would
    sum over the batch in half precision), and under the ``standard`` kernel
    policy."""

    def __init__(self, *args, kernels="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.kernels = check_kernels(kernels)

    def _fast_filter_gradient(self, inputs) -> bool:
        return (kernel_policy(self.kernels).depthwise_filter_gradient
                and min(self.kernel_size) >= 5 and tuple(self.strides) == (1, 1)
                and self.depth_multiplier == 1 and not self.use_bias
                and self.data_format == "channels_last"
                and inputs.dtype in (tf.float32, tf.float64))

    def call(self, inputs):
        if not self._fast_filter_gradient(inputs):
            return super().call(inputs)
        return depthwise_conv2d(inputs, tf.cast(self.kernel, inputs.dtype), self.dilation_rate[0],
                                self.padding.upper(), self.kernels)

    def get_config(self):
        return {**super().get_config(), "kernels": self.kernels}


def depthwise_conv2d(x, kernel, dilation: int = 1, padding: str = "SAME", kernels: str = "auto"):
    """A stride-1 depthwise convolution (channel multiplier 1, kernel
    ``(k, k, C, 1)``), with :class:`DepthwiseConv2D`'s faster filter gradient
    for 5×5 and larger kernels in float32/float64 when the ``kernels``
    policy takes it (TensorFlow's own kernel otherwise)."""
    if (kernel.shape[0] < 5 or x.dtype not in (tf.float32, tf.float64)
            or not kernel_policy(kernels).depthwise_filter_gradient):
        return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding, dilations=[dilation, dilation])
    if dilation == 1:
        return _depthwise_conv_fast_filter_gradient(x, kernel, padding)
    # as tf.nn.depthwise_conv2d computes a dilated convolution
    return tf.nn.with_space_to_batch(
        x, [dilation, dilation], padding,
        lambda x, _, padding: _depthwise_conv_fast_filter_gradient(x, kernel, padding),
        filter_shape=kernel.shape[:2])


def _subsample_2(x, offset=0, policy=None):
    """``x[:, offset::2, offset::2, :]`` for even H, W (offset 0 or 1).

    Strided slicing is cheap forward, but its gradient (StridedSliceGrad) is
    a slow full copy on CPU; space_to_depth + split has cheap gradients
    (depth_to_space, concat): used when ``policy`` (a
    :class:`tfnas.kernels.KernelPolicy`, default the device's) says so."""
    policy = policy or kernel_policy()
    h, w = x.shape[1], x.shape[2]
    if not policy.subsample_space_to_depth or h is None or w is None or h % 2 or w % 2:
        return x[:, offset::2, offset::2, :]
    blocks = tf.split(tf.nn.space_to_depth(x, 2), 4, axis=-1)  # (0,0), (0,1), (1,0), (1,1)
    return blocks[3 * offset]


class _Operation(keras.layers.Layer):
    """Base: sub-layers inherit this layer's dtype policy; ``kernels`` (a
    :mod:`tfnas.kernels` setting) goes to the sub-layers that have a
    CPU-tuned kernel."""

    def __init__(self, kernels="auto", **kwargs):
        super().__init__(**kwargs)
        self.kernels = check_kernels(kernels)

    def _sub(self, cls, *args, **kwargs):
        kwargs.setdefault("dtype", self.dtype_policy)
        return cls(*args, **kwargs)

    def _conv(self, filters, kernel, stride=1, padding="valid", name=None):
        if kernel == 1 and stride == 1:
            return self._sub(PointwiseConv2D, filters, kernels=self.kernels,
                             kernel_initializer=conv_initializer(), name=name)
        return self._sub(keras.layers.Conv2D, filters, kernel, strides=stride, padding=padding,
                         use_bias=False, kernel_initializer=conv_initializer(), name=name)

    def _depthwise(self, kernel, stride=1, dilation=1, padding="valid", name=None):
        return self._sub(DepthwiseConv2D, kernel, strides=stride, padding=padding,
                         dilation_rate=dilation, use_bias=False, kernels=self.kernels,
                         depthwise_initializer=conv_initializer(), name=name)

    def _bn(self, name="bn"):
        return self._sub(BatchNorm, affine=self.affine, name=name)

    def get_config(self):
        return {**super().get_config(), "kernels": self.kernels}


@_register
class Identity(keras.layers.Layer):
    """skip_connect at stride 1."""

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


@_register
class Zero(keras.layers.Layer):
    """The ``none`` operation: zeros of the output shape (stride aware)."""

    def __init__(self, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)

    def call(self, inputs):
        if self.stride == 1:
            return tf.zeros_like(inputs)
        return tf.zeros_like(inputs[:, ::self.stride, ::self.stride, :])

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.stride
        return (b, None if h is None else -(-h // s), None if w is None else -(-w // s), c)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


@_register
class ReLUConvBN(_Operation):
    """ReLU, k×k conv (no bias, padding k//2), BN."""

    def __init__(self, channels, kernel_size=1, stride=1, affine=True, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.kernel_size, self.stride, self.affine = int(channels), int(kernel_size), int(stride), bool(affine)
        self.padding = self.kernel_size // 2
        same = self.stride == 1 and self.kernel_size % 2 == 1
        self._same = same
        self.conv = self._conv(self.channels, self.kernel_size, self.stride, "same" if same else "valid", name="conv")
        self.bn = self._bn()

    def build(self, input_shape):
        padded = self._padded_shape(input_shape)
        self.conv.build(padded)
        self.bn.build(self.conv.compute_output_shape(padded))

    def _padded_shape(self, shape):
        if self._same:
            return tuple(shape)
        b, h, w, c = shape
        p = self.padding
        return (b, None if h is None else h + 2 * p, None if w is None else w + 2 * p, c)

    def call(self, inputs, training=False):
        x = tf.nn.relu(inputs)
        if not self._same:
            x = pad_symmetric(x, self.padding)
        return self.bn(self.conv(x), training=training)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(self._padded_shape(input_shape))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "kernel_size": self.kernel_size,
                "stride": self.stride, "affine": self.affine}


@_register
class FactorizedReduce(_Operation):
    """Halve the resolution without losing pixels: ReLU, two 1×1 stride-2
    convs of C/2 channels (the second on the input shifted by one pixel),
    concatenated, BN.  Needs even C and even spatial size (as the reference)."""

    def __init__(self, channels, affine=True, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.affine = int(channels), bool(affine)
        if self.channels % 2:
            raise ValueError(f"FactorizedReduce: channels must be even, got {self.channels}")
        half = self.channels // 2
        # 1x1 stride-2 conv == subsample then 1x1 conv (see _subsample_2)
        self.conv_1 = self._conv(half, 1, name="conv_1")
        self.conv_2 = self._conv(half, 1, name="conv_2")
        self.bn = self._bn()

    def build(self, input_shape):
        b, h, w, c = input_shape
        for n in (h, w):
            if n is not None and n % 2:
                raise ValueError(f"FactorizedReduce: spatial size must be even, got {h}x{w}")
        half = (b, None if h is None else h // 2, None if w is None else w // 2, c)
        self.conv_1.build(half)
        self.conv_2.build(half)
        self.bn.build(self.compute_output_shape(input_shape))

    def call(self, inputs, training=False):
        x = tf.nn.relu(inputs)
        policy = kernel_policy(self.kernels)
        y = tf.concat([self.conv_1(_subsample_2(x, 0, policy)), self.conv_2(_subsample_2(x, 1, policy))],
                      axis=-1)
        return self.bn(y, training=training)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else h // 2, None if w is None else w // 2, self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "affine": self.affine}


@_register
class DilConv(_Operation):
    """ReLU, depthwise k×k (dilation d, stride s), pointwise 1×1, BN.

    Stride 2 with dilation 2 is computed exactly and 4× cheaper than the
    "stride-1 then subsample" decomposition: with the input padded by
    ``d·(k-1)/2``, ``out[i] = Σ_k w[k]·x_pad[2i + 2k]`` only reads the even
    pixels, so it is an undilated stride-1 valid conv of ``x_pad[::2, ::2]``
    (tested against the decomposition).  Raw ``tf.nn.depthwise_conv2d`` with
    stride 2 and dilation 2 is never called (it returns wrong numbers)."""

    def __init__(self, channels, kernel_size=3, stride=1, dilation=2, affine=True, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.kernel_size, self.stride = int(channels), int(kernel_size), int(stride)
        self.dilation, self.affine = int(dilation), bool(affine)
        self.padding = self.kernel_size // 2 * self.dilation
        if self.stride == 1:
            self._mode = "same"
            self.depthwise = self._depthwise(self.kernel_size, 1, self.dilation, "same", name="depthwise")
        elif self.stride == self.dilation:
            self._mode = "subsample"
            self.depthwise = self._depthwise(self.kernel_size, 1, 1, "valid", name="depthwise")
        else:
            self._mode = "padded"
            self.depthwise = self._depthwise(self.kernel_size, self.stride, self.dilation, "valid", name="depthwise")
        self.pointwise = self._conv(self.channels, 1, name="pointwise")
        self.bn = self._bn()

    def _depthwise_input_shape(self, shape):
        b, h, w, c = shape
        if self._mode == "same":
            return tuple(shape)
        p = self.padding
        size = [None if n is None else n + 2 * p for n in (h, w)]
        if self._mode == "subsample":
            size = [None if n is None else -(-n // self.stride) for n in size]
        return (b, size[0], size[1], c)

    def build(self, input_shape):
        shape = self._depthwise_input_shape(input_shape)
        self.depthwise.build(shape)
        shape = self.depthwise.compute_output_shape(shape)
        self.pointwise.build(shape)
        self.bn.build(self.pointwise.compute_output_shape(shape))

    def call(self, inputs, training=False):
        x = tf.nn.relu(inputs)
        if self._mode != "same":
            x = pad_symmetric(x, self.padding)
        if self._mode == "subsample":
            x = (_subsample_2(x, 0, kernel_policy(self.kernels)) if self.stride == 2
                 else x[:, ::self.stride, ::self.stride, :])
        x = self.pointwise(self.depthwise(x))
        return self.bn(x, training=training)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        return (b, _out_size(h, k, s, p, d), _out_size(w, k, s, p, d), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "kernel_size": self.kernel_size,
                "stride": self.stride, "dilation": self.dilation, "affine": self.affine}


@_register
class SepConv(_Operation):
    """(ReLU, depthwise k×k, pointwise 1×1, BN) twice; stride on the first
    depthwise conv."""

    def __init__(self, channels, kernel_size=3, stride=1, affine=True, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.kernel_size, self.stride, self.affine = int(channels), int(kernel_size), int(stride), bool(affine)
        self.padding = self.kernel_size // 2
        self._same = self.stride == 1
        self.depthwise_1 = self._depthwise(self.kernel_size, self.stride, padding="same" if self._same else "valid",
                                           name="depthwise_1")
        self.pointwise_1 = self._conv(self.channels, 1, name="pointwise_1")
        self.bn_1 = self._bn("bn_1")
        self.depthwise_2 = self._depthwise(self.kernel_size, 1, padding="same", name="depthwise_2")
        self.pointwise_2 = self._conv(self.channels, 1, name="pointwise_2")
        self.bn_2 = self._bn("bn_2")

    def build(self, input_shape):
        b, h, w, c = input_shape
        p = 0 if self._same else self.padding
        shape = (b, None if h is None else h + 2 * p, None if w is None else w + 2 * p, c)
        for layer in (self.depthwise_1, self.pointwise_1, self.bn_1, self.depthwise_2, self.pointwise_2, self.bn_2):
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, inputs, training=False):
        x = tf.nn.relu(inputs)
        if not self._same:
            x = pad_symmetric(x, self.padding)
        x = self.bn_1(self.pointwise_1(self.depthwise_1(x)), training=training)
        x = tf.nn.relu(x)
        x = self.bn_2(self.pointwise_2(self.depthwise_2(x)), training=training)
        return x

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        k, s, p = self.kernel_size, self.stride, self.padding
        return (b, _out_size(h, k, s, p), _out_size(w, k, s, p), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "kernel_size": self.kernel_size,
                "stride": self.stride, "affine": self.affine}


@_register
class Conv7x1_1x7(_Operation):
    """ReLU, 1×7 conv (stride (1, s)), 7×1 conv (stride (s, 1)), BN."""

    def __init__(self, channels, stride=1, affine=True, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.stride, self.affine = int(channels), int(stride), bool(affine)
        same = self.stride == 1
        self._same = same
        pad = "same" if same else "valid"
        self.conv_1x7 = self._conv(self.channels, (1, 7), (1, self.stride), pad, name="conv_1x7")
        self.conv_7x1 = self._conv(self.channels, (7, 1), (self.stride, 1), pad, name="conv_7x1")
        self.bn = self._bn()

    def build(self, input_shape):
        b, h, w, c = input_shape
        shape = tuple(input_shape) if self._same else (b, h, None if w is None else w + 6, c)
        self.conv_1x7.build(shape)
        shape = self.conv_1x7.compute_output_shape(shape)
        if not self._same:
            shape = (shape[0], None if shape[1] is None else shape[1] + 6, shape[2], shape[3])
        self.conv_7x1.build(shape)
        self.bn.build(self.conv_7x1.compute_output_shape(shape))

    def call(self, inputs, training=False):
        x = tf.nn.relu(inputs)
        if not self._same:
            x = pad_symmetric(x, 0, 3)
        x = self.conv_1x7(x)
        if not self._same:
            x = pad_symmetric(x, 3, 0)
        return self.bn(self.conv_7x1(x), training=training)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.stride
        return (b, _out_size(h, 7, s, 3), _out_size(w, 7, s, 3), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "stride": self.stride, "affine": self.affine}


def max_pool_3x3(x, stride, deterministic_second_derivatives=False, gradient_recomputes=False):
    """3×3 max pooling, padding 1 (the padding never wins).

    ``deterministic_second_derivatives``: the pooling is a gather at the
    indices of ``tf.nn.max_pool_with_argmax``, so every derivative of any
    order (nested tapes, ``ForwardAccumulator``) is a gather or scatter at the
    argmax TensorFlow's first derivative (``MaxPoolGrad``) uses.  TensorFlow's
    own derivative of ``MaxPoolGrad``, the CPU kernel ``MaxPoolGradGrad``,
    breaks ties between equal window values differently (a max pool of a
    max pool has them: wrong HVPs, tested) and differently from call to call
    under inter-op parallelism (some exact DARTS hypergradients of a tiny
    supernet differed from run to run).  Slower than the plain kernel, so
    only where second
    derivatives are taken (:func:`deterministic_second_derivatives`).

    ``gradient_recomputes``: the first derivative recomputes the pooling next
    to its ``MaxPoolGrad``.  Where the gradient is traced apart from the
    forward pass (a ``tf.while_loop`` body: the low-memory search cells),
    oneDNN cannot pair ``MaxPoolGrad`` with its forward op and TensorFlow
    falls back to a much slower kernel; recomputing the cheap forward op next
    to the gradient restores the fast one (docs/benchmarks.md)."""
    if stride == 1:  # TF 'SAME' at stride 1 pads 1 on both sides, ignored by max
        padding = "SAME"
    else:
        x, padding = pad_symmetric(x, 1, value=x.dtype.min), "VALID"
    if gradient_recomputes and not deterministic_second_derivatives:
        return _max_pool_gradient_recomputes(x, stride, padding)
    if not deterministic_second_derivatives:
        return tf.nn.max_pool2d(x, 3, stride, padding)
    # Only the indices (within each sample) are used; stop_gradient keeps
    # forward mode from asking for a derivative TensorFlow does not register.
    _, argmax = tf.nn.max_pool_with_argmax(tf.stop_gradient(x), 3, stride, padding)
    batch = tf.shape(x)[0]
    picked = tf.gather(tf.reshape(x, [batch, -1]), tf.reshape(argmax, [batch, -1]), batch_dims=1)
    return tf.reshape(picked, tf.shape(argmax))


def _max_pool_gradient_recomputes(x, stride, padding):
    @tf.custom_gradient
    def pool(x):
        def gradient(dy):
            # x into the gradient's graph first (in a loop's gradient body x
            # is captured): the tape must watch the tensor the pooling reads.
            x_here = tf.identity(x)
            with tf.GradientTape() as tape:
                tape.watch(x_here)
                y = tf.nn.max_pool2d(x_here, 3, stride, padding)
            return tape.gradient(y, x_here, output_gradients=dy)
        return tf.nn.max_pool2d(x, 3, stride, padding), gradient
    return pool(x)


@_register
class Pool(keras.layers.Layer):
    """3×3 max or average pooling, padding 1; the average excludes the
    padding from the count (PyTorch ``count_include_pad=False``).  No
    parameters; channels are unchanged (the caller guarantees C_in == C)."""

    def __init__(self, kind="max", stride=1, kernels="auto", **kwargs):
        super().__init__(**kwargs)
        if kind not in ("max", "avg"):
            raise ValueError(f"Pool: kind must be 'max' or 'avg', got {kind!r}")
        self.kind, self.stride = kind, int(stride)
        self.kernels = check_kernels(kernels)
        # Trace-time switch (not configuration): see deterministic_second_derivatives.
        self.deterministic_second_derivatives = False
        # Set by layers whose pools' gradients are traced in loops (see max_pool_3x3).
        self.gradient_recomputes = False

    def call(self, inputs):
        x, s = inputs, self.stride
        if self.kind == "max":
            recomputes = (self.gradient_recomputes
                          and kernel_policy(self.kernels).max_pool_gradient_recomputes)
            return max_pool_3x3(x, s, self.deterministic_second_derivatives, recomputes)
        if s == 1:  # TF 'SAME' pools ignore the padding, as the reference does
            return tf.nn.avg_pool2d(x, 3, 1, "SAME")
        summed = tf.nn.avg_pool2d(pad_symmetric(x, 1), 3, s, "VALID")
        return summed * self._count_correction(x)

    def _count_correction(self, x):
        """9 / (number of real pixels in each window), shape (1, H', W', 1)."""
        h, w = x.shape[1], x.shape[2]
        if h is not None and w is not None:
            ones = np.pad(np.ones((h, w)), 1)
            counts = np.lib.stride_tricks.sliding_window_view(ones, (3, 3))[::self.stride, ::self.stride].sum(axis=(2, 3))
            return tf.constant((9.0 / counts)[None, :, :, None], dtype=x.dtype)
        ones = tf.ones_like(x[:1, :, :, :1])
        counts = tf.nn.avg_pool2d(pad_symmetric(ones, 1), 3, self.stride, "VALID")
        return 1.0 / counts

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.stride
        return (b, _out_size(h, 3, s, 1), _out_size(w, 3, s, 1), c)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "stride": self.stride, "kernels": self.kernels}


def _skip(spec, channels, stride, affine, kernels="auto", **kw):
    if stride == 1:
        return Identity(**kw)
    return FactorizedReduce(channels, affine=affine, kernels=kernels, **kw)


# One factory per family of tfnas.operations.OPERATIONS:
# factory(spec, channels, stride, affine, kernels=..., **layer_kwargs) -> Layer
LAYER_FACTORIES = {
    "zero": lambda spec, C, stride, affine, kernels="auto", **kw: Zero(stride, **kw),
    "pool": lambda spec, C, stride, affine, **kw: Pool(spec.pool, stride, **kw),
    "skip": _skip,
    "sep_conv": lambda spec, C, stride, affine, **kw: SepConv(C, spec.kernel_size, stride, affine, **kw),
    "dil_conv": lambda spec, C, stride, affine, **kw: DilConv(C, spec.kernel_size, stride, spec.dilation,
                                                              affine, **kw),
    "conv_7x1_1x7": lambda spec, C, stride, affine, **kw: Conv7x1_1x7(C, stride, affine, **kw),
}


def make_operation(name, channels, stride, affine=True, *, layer_name=None, kernels="auto",
                   **layer_kwargs):
    """The layer for operation ``name`` (a row of :data:`tfnas.operations.OPERATIONS`)
    with ``channels`` output channels (= input channels) and ``stride`` 1 or 2.
    ``layer_name`` becomes the Keras layer's name; ``kernels`` is the
    :mod:`tfnas.kernels` setting; other ``layer_kwargs`` (e.g. ``dtype``) go
    to the layer."""
    spec = operation_spec(name)
    if layer_name is not None:
        layer_kwargs["name"] = layer_name
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    return LAYER_FACTORIES[spec.family](spec, int(channels), int(stride), bool(affine),
                                        kernels=check_kernels(kernels), **layer_kwargs)
