"""Operations: shapes, numbers against an independent NumPy reference
(PyTorch-style symmetric padding), BatchNorm semantics and derivatives,
parameter counts, serialisation, float64."""

import collections
import warnings

import numpy as np
import pytest

import keras
import tensorflow as tf

from tfnas import ops
from tfnas.genotypes import GenotypeError

EPS = 1e-5
ALL_OPS = sorted(ops.OPERATIONS)


# -- NumPy reference -----------------------------------------------------------

def np_conv(x, w, stride=(1, 1), pad=(0, 0), dilation=1, depthwise=False):
    """PyTorch-semantics conv on NHWC: symmetric zero padding ``pad``;
    ``w`` is (kh, kw, C_in, C_out) or depthwise (kh, kw, C, 1)."""
    n, h, wd, c = x.shape
    kh, kw = w.shape[:2]
    sh, sw = stride
    xp = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    ho = (h + 2 * pad[0] - dilation * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pad[1] - dilation * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, ho, wo, c if depthwise else w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dilation: i * dilation + sh * (ho - 1) + 1: sh,
                       j * dilation: j * dilation + sw * (wo - 1) + 1: sw, :]
            out += patch * w[i, j, :, 0] if depthwise else patch @ w[i, j]
    return out


def np_pool(x, kind, stride):
    """3x3 pool, padding 1, the padding excluded (max: -inf; avg: count)."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=np.nan)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = np.zeros((n, ho, wo, c))
    for a in range(ho):
        for b in range(wo):
            win = xp[:, a * stride: a * stride + 3, b * stride: b * stride + 3, :]
            out[:, a, b] = np.nanmax(win, axis=(1, 2)) if kind == "max" else np.nanmean(win, axis=(1, 2))
    return out


def np_bn(x, gamma=None, beta=None):
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    y = (x - mean) / np.sqrt(var + EPS)
    if gamma is not None:
        y = y * gamma + beta
    return y


def relu(x):
    return np.maximum(x, 0)


def randomize_bn(layer, rng):
    """Non-trivial γ/β so the BN part of a comparison is exercised."""
    for bn in ops.batch_norm_layers(layer):
        if bn.affine:
            bn.gamma.assign(rng.uniform(0.5, 1.5, bn.gamma.shape))
            bn.beta.assign(rng.normal(size=bn.beta.shape))


def bn_params(bn):
    return (bn.gamma.numpy(), bn.beta.numpy()) if bn.affine else (None, None)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def run(layer, x, training=True):
    return layer(tf.constant(x, tf.float64), training=training).numpy()


# -- shapes ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_operation_shapes_follow_reference_padding(name, stride, size):
    if name == "skip_connect" and stride == 2 and size % 2:
        pytest.skip("FactorizedReduce needs an even size (as the reference)")
    layer = ops.make_operation(name, 6, stride)
    x = tf.random.normal([2, size, size, 6])
    y = layer(x, training=True)
    expected = (size - 1) // stride + 1  # k odd, padding k//2*dilation: ceil(size/stride)
    assert tuple(y.shape) == (2, expected, expected, 6)
    assert tuple(layer.compute_output_shape((2, size, size, 6))) == (2, expected, expected, 6)


def test_factorized_reduce_rejects_odd_sizes_and_channels():
    with pytest.raises(ValueError, match="even"):
        ops.FactorizedReduce(5)
    with pytest.raises(ValueError, match="even"):
        ops.FactorizedReduce(4)(tf.zeros([1, 7, 7, 4]))


def test_make_operation_errors():
    with pytest.raises(GenotypeError, match="unknown operation 'conv_9x9'"):
        ops.make_operation("conv_9x9", 4, 1)
    with pytest.raises(ValueError, match="stride"):
        ops.make_operation("sep_conv_3x3", 4, 3)


# -- numbers against the NumPy reference ------------------------------------------

@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7)])
def test_sep_conv_matches_reference(k, stride, size, rng):
    x = rng.normal(size=(2, size, size, 4))
    layer = ops.make_operation(f"sep_conv_{k}x{k}", 4, stride, dtype="float64")
    layer.build(x.shape)
    randomize_bn(layer, rng)
    h = np_conv(relu(x), layer.depthwise_1.kernel.numpy(), (stride, stride), (k // 2, k // 2), depthwise=True)
    h = np_bn(np_conv(h, layer.pointwise_1.kernel.numpy()), *bn_params(layer.bn_1))
    h = np_conv(relu(h), layer.depthwise_2.kernel.numpy(), (1, 1), (k // 2, k // 2), depthwise=True)
    h = np_bn(np_conv(h, layer.pointwise_2.kernel.numpy()), *bn_params(layer.bn_2))
    np.testing.assert_allclose(run(layer, x), h, atol=1e-9)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7), (2, 6)])
def test_dil_conv_matches_reference(k, stride, size, rng):
    # Stride 2 + dilation 2 is the case raw tf.nn.depthwise_conv2d gets wrong.
    x = rng.normal(size=(2, size, size, 4))
    layer = ops.make_operation(f"dil_conv_{k}x{k}", 4, stride, dtype="float64")
    layer.build(x.shape)
    randomize_bn(layer, rng)
    pad = k // 2 * 2
    h = np_conv(relu(x), layer.depthwise.kernel.numpy(), (stride, stride), (pad, pad), dilation=2, depthwise=True)
    h = np_bn(np_conv(h, layer.pointwise.kernel.numpy()), *bn_params(layer.bn))
    np.testing.assert_allclose(run(layer, x), h, atol=1e-9)


def _depthwise_derivatives(layer, x, v):
    """Output, first derivatives (input, kernel) of ``sum(sin(y))``, and the
    input gradient of ``dx·v + |dk|²`` (nested tapes: second derivatives
    through both the input and the filter gradient)."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.sin(y))  # curved, so the HVP is not zero
        dx, dk = inner.gradient(loss, [x, layer.kernel])
        directional = tf.reduce_sum(dx * v) + tf.reduce_sum(dk * dk)
    return y, dx, dk, outer.gradient(directional, x)


def _traced(fn, layer, mode, x):
    """``fn(layer, x, v)`` eager, in a ``tf.function``, or in one traced for
    any batch size (unknown static batch: the filter gradient's dynamic
    shapes)."""
    if mode == "eager":
        return lambda x, v: fn(layer, x, v)
    if mode == "tf.function":
        return tf.function(lambda x, v: fn(layer, x, v))
    spec = tf.TensorSpec((None, *x.shape[1:]), x.dtype)
    return tf.function(lambda x, v: fn(layer, x, v), input_signature=[spec, spec])


@pytest.mark.parametrize("compiled", ["eager", "tf.function", "any batch"])
@pytest.mark.parametrize("kernel,dilation,padding,dtype", [
    (5, 1, "same", "float32"), (5, 2, "same", "float32"), (5, 1, "valid", "float32"),
    (7, 1, "same", "float64"), (5, 2, "same", "float64"), (3, 1, "same", "float32")])
def test_depthwise_filter_gradient_matches_keras(kernel, dilation, padding, dtype, compiled, rng):
    """tfnas's DepthwiseConv2D (its own filter gradient for kernels >= 5)
    gives Keras' outputs, first derivatives and second derivatives."""
    kwargs = dict(kernel_size=kernel, padding=padding, dilation_rate=dilation, use_bias=False,
                  dtype=dtype)
    ours, theirs = ops.DepthwiseConv2D(**kwargs), keras.layers.DepthwiseConv2D(**kwargs)
    x = tf.constant(rng.normal(size=(3, 11, 10, 4)), dtype)
    v = tf.constant(rng.normal(size=(3, 11, 10, 4)), dtype)
    ours.build(x.shape)
    theirs.build(x.shape)
    theirs.kernel.assign(ours.kernel)
    assert ours._fast_filter_gradient(x) == (kernel >= 5)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    for a, b in zip(_traced(_depthwise_derivatives, ours, compiled, x)(x, v),
                    _traced(_depthwise_derivatives, theirs, compiled, x)(x, v)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), **tol)
    assert ops.DepthwiseConv2D.from_config(ours.get_config()).kernel_size == (kernel, kernel)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7), (1, 5)])
def test_pools_match_reference_excluding_padding(kind, stride, size, rng):
    x = rng.normal(size=(2, size, size, 3)) - 2.0  # negative: max must not see zero padding
    layer = ops.make_operation(f"{kind}_pool_3x3", 3, stride, dtype="float64")
    np.testing.assert_allclose(run(layer, x), np_pool(x, kind, stride), atol=1e-12)


def _max_pool_derivatives(pool, x, v, c, stride):
    """First derivative and Hessian-vector product (double backprop) of
    f(x) = Σ c·pool(sin x)²."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            f = tf.reduce_sum(c * tf.square(pool(tf.sin(x), stride)))
        g = inner.gradient(f, x)
        gv = tf.reduce_sum(g * v)
    return g, outer.gradient(gv, x)


def _deterministic_max_pool(x, stride):
    return ops.max_pool_3x3(x, stride, deterministic_second_derivatives=True)


def _op_types(graph):
    return {op.type for op in graph.get_operations()}


def _tf_max_pool(x, stride):
    return tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=-1e9),
                            3, stride, "VALID")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("stride,size", [(1, 6), (2, 6), (2, 7)])
def test_max_pool_second_derivatives(stride, size, compiled, rng):
    x = tf.constant(rng.normal(size=(3, size, size, 2)))
    v = tf.constant(rng.normal(size=x.shape))
    out = -(-size // stride)
    c = tf.constant(rng.normal(size=(3, out, out, 2)))
    derivatives = _max_pool_derivatives
    if compiled:
        derivatives = tf.function(derivatives)
        graph = derivatives.get_concrete_function(_deterministic_max_pool, x, v, c, stride).graph
        # TensorFlow's CPU MaxPoolGradGrad breaks ties unlike MaxPoolGrad and
        # gave run-to-run different values; this path must not use it.
        assert "MaxPoolGradGrad" not in _op_types(graph)
    g, hvp = derivatives(_deterministic_max_pool, x, v, c, stride)
    g_tf, _ = _max_pool_derivatives(_tf_max_pool, x, v, c, stride)
    np.testing.assert_array_equal(g.numpy(), g_tf.numpy())  # TF's own first derivative
    h = 1e-6
    plus, _ = _max_pool_derivatives(_tf_max_pool, x + h * v, v, c, stride)
    minus, _ = _max_pool_derivatives(_tf_max_pool, x - h * v, v, c, stride)
    fd = (plus - minus).numpy() / (2 * h)
    assert np.abs(fd).max() > 1e-2
    np.testing.assert_allclose(hvp.numpy(), fd, rtol=1e-6, atol=1e-8 * np.abs(fd).max())


def test_deterministic_second_derivatives_switches_the_pools_of_a_model(rng):
    inputs = keras.Input((6, 6, 2), dtype="float64")
    pools = [ops.Pool("max", 1, dtype="float64"), ops.Pool("max", 2, dtype="float64")]
    model = keras.Model(inputs, pools[1](pools[0](inputs)))
    x = tf.constant(rng.normal(size=(2, 6, 6, 2)))

    def hvp_graph():
        def hvp(x):
            with tf.GradientTape() as outer:
                outer.watch(x)
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    f = tf.reduce_sum(tf.square(model(tf.sin(x))))
                g_sum = tf.reduce_sum(inner.gradient(f, x))
            return outer.gradient(g_sum, x)
        return tf.function(hvp).get_concrete_function(x).graph

    assert "MaxPoolGradGrad" in _op_types(hvp_graph())  # TensorFlow's default path
    with ops.deterministic_second_derivatives(model):
        assert all(p.deterministic_second_derivatives for p in pools)
        assert "MaxPoolGradGrad" not in _op_types(hvp_graph())
    assert not any(p.deterministic_second_derivatives for p in pools)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_gradient_recomputes_in_loops(stride, rng):
    """The recomputing max-pool gradient (low-memory search cells) equals the
    plain one, eager and inside a recomputed tf.while_loop under tf.function,
    where the gradient is traced in another graph than the pooling."""
    x = tf.constant(rng.normal(size=(2, 8, 8, 3)).astype("float32"))

    def gradient(recompute):
        def loss_gradient(x):
            def pooled(x):
                def body(k, total):
                    scaled = x * tf.cast(k + 1, x.dtype)
                    return k + 1, total + ops.max_pool_3x3(scaled, stride, False, recompute)
                return tf.while_loop(lambda k, _: k < 3, body,
                                     (tf.constant(0), tf.zeros_like(ops.max_pool_3x3(x, stride))))[1]
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.square(tf.recompute_grad(pooled)(x)))
            return tape.gradient(loss, x)
        return loss_gradient(x), tf.function(loss_gradient, autograph=False)(x)

    plain_eager, plain_graph = gradient(False)
    assert np.abs(plain_graph.numpy()).max() > 1
    for g in gradient(True):
        np.testing.assert_allclose(g.numpy(), plain_eager.numpy(), rtol=1e-6)
        np.testing.assert_allclose(g.numpy(), plain_graph.numpy(), rtol=1e-6)


def test_factorized_reduce_matches_reference(rng):
    x = rng.normal(size=(2, 8, 8, 6))
    layer = ops.make_operation("skip_connect", 6, 2, dtype="float64")
    assert isinstance(layer, ops.FactorizedReduce)
    layer.build(x.shape)
    randomize_bn(layer, rng)
    r = relu(x)
    a = np_conv(r, layer.conv_1.kernel.numpy(), (2, 2))
    b = np_conv(r[:, 1:, 1:, :], layer.conv_2.kernel.numpy(), (2, 2))
    expected = np_bn(np.concatenate([a, b], axis=-1), *bn_params(layer.bn))
    np.testing.assert_allclose(run(layer, x), expected, atol=1e-9)


@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7)])
def test_conv_7x1_1x7_matches_reference(stride, size, rng):
    x = rng.normal(size=(2, size, size, 4))
    layer = ops.make_operation("conv_7x1_1x7", 4, stride, dtype="float64")
    layer.build(x.shape)
    randomize_bn(layer, rng)
    h = np_conv(relu(x), layer.conv_1x7.kernel.numpy(), (1, stride), (0, 3))
    h = np_conv(h, layer.conv_7x1.kernel.numpy(), (stride, 1), (3, 0))
    np.testing.assert_allclose(run(layer, x), np_bn(h, *bn_params(layer.bn)), atol=1e-9)


@pytest.mark.parametrize("stride", [1, 2])
def test_relu_conv_bn_matches_reference(stride, rng):
    x = rng.normal(size=(2, 8, 8, 3))
    layer = ops.ReLUConvBN(5, 3, stride, dtype="float64")
    layer.build(x.shape)
    randomize_bn(layer, rng)
    h = np_conv(relu(x), layer.conv.kernel.numpy(), (stride, stride), (1, 1))
    np.testing.assert_allclose(run(layer, x), np_bn(h, *bn_params(layer.bn)), atol=1e-9)


def test_zero_and_identity(rng):
    x = rng.normal(size=(2, 8, 8, 3))
    assert np.array_equal(run(ops.make_operation("skip_connect", 3, 1, dtype="float64"), x), x)
    for stride, size in [(1, 8), (2, 4)]:
        y = run(ops.make_operation("none", 3, stride, dtype="float64"), x)
        assert y.shape == (2, size, size, 3) and not y.any()


def test_non_affine_operations_have_no_bn_parameters():
    layer = ops.make_operation("sep_conv_3x3", 4, 1, affine=False)
    layer.build((1, 8, 8, 4))
    assert all(bn.gamma is None and bn.beta is None for bn in ops.batch_norm_layers(layer))
    assert len(layer.trainable_weights) == 4  # two depthwise and two pointwise kernels


@pytest.mark.parametrize("affine", [True, False])
def test_parameter_count_formula_matches_built_layers(affine):
    for name in ALL_OPS:
        for stride in (1, 2):
            layer = ops.make_operation(name, 6, stride, affine)
            layer.build((1, 8, 8, 6))
            built = sum(int(np.prod(v.shape)) for v in layer.trainable_weights)
            assert ops.operation_parameter_count(name, 6, stride, affine) == built, (name, stride)


# -- BatchNorm ---------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_batch_norm_training_output_matches_formula_and_keras(fused, rng):
    x = (rng.normal(size=(4, 5, 5, 3)) * 3 + 1).astype(np.float32)
    bn = ops.BatchNorm(fused=fused)
    bn.build(x.shape)
    gamma, beta = rng.uniform(0.5, 2, 3).astype(np.float32), rng.normal(size=3).astype(np.float32)
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    assert bn.uses_fused(True) is fused
    y = bn(x, training=True).numpy()
    np.testing.assert_allclose(y, np_bn(x.astype(np.float64), gamma, beta), atol=2e-5)
    ref = keras.layers.BatchNormalization(epsilon=EPS, momentum=0.9)
    ref.build(x.shape)
    ref.gamma.assign(gamma)
    ref.beta.assign(beta)
    np.testing.assert_allclose(y, ref(x, training=True).numpy(), atol=2e-5)


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_batch_norm_moving_statistics_follow_pytorch(fused, traced, rng):
    # PyTorch: running = 0.9 running + 0.1 batch, running_var uses the
    # unbiased (n-1) batch variance; normalisation uses the biased one.
    x = (rng.normal(size=(4, 3, 3, 2)) * 2 + 5).astype(np.float32)
    bn = ops.BatchNorm(fused=fused)
    bn.build(x.shape)
    step = tf.function(lambda t: bn(t, training=True)) if traced else (lambda t: bn(t, training=True))
    step(x)
    flat = x.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    step(x)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.19 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.81 + 0.19 * flat.var(0, ddof=1), rtol=1e-5)
    # Inference uses the moving statistics and leaves them alone.
    before = bn.moving_mean.numpy().copy()
    y = bn(x, training=False).numpy()
    expected = (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + EPS) * bn.gamma.numpy()
    np.testing.assert_allclose(y, expected + bn.beta.numpy(), rtol=1e-5, atol=1e-5)
    assert np.array_equal(before, bn.moving_mean.numpy())


def test_fused_batch_norm_adds_only_its_kernels_to_a_traced_pass(rng):
    # A search pass holds ~900 BNs and every graph node costs trace time: the
    # kernel updates the moving statistics itself, non-affine BNs of one
    # width share their constant scale and offset, and the tape makes no
    # zero gradients for the outputs nothing differentiates.
    x = tf.constant(rng.normal(size=(2, 4, 4, 5)).astype(np.float32))
    bns = [ops.BatchNorm(affine=False) for _ in range(3)]
    for bn in bns:
        bn.build(x.shape)

    def pass_(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = x
            for bn in bns:
                y = bn(y, training=True)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, x)

    graph = tf.function(pass_).get_concrete_function(x).graph
    types = collections.Counter(op.type for op in graph.get_operations())
    assert types["FusedBatchNorm"] == 3 and types["FusedBatchNormGrad"] == 3, types
    assert types["AddV2"] == 0 and types["ZerosLike"] == 0 and types["Fill"] == 0, types
    vectors = [op for op in graph.get_operations() if op.type == "Const" and op.outputs[0].shape == (5,)]
    assert len(vectors) == 2, [op.name for op in vectors]   # ones and zeros, shared
    assert len([op for op in graph.get_operations() if op.type == "AssignVariableOp"]) == 6


@pytest.mark.parametrize("fused", [True, False])
def test_batch_statistics_frozen_normalises_without_updating(fused, rng):
    x = (rng.normal(size=(4, 3, 3, 2)) * 2 + 5).astype(np.float32)
    bn = ops.BatchNorm(fused=fused)
    model = keras.Sequential([keras.Input((3, 3, 2)), bn])
    y_free = bn(x, training=True).numpy()
    mean, variance = bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()
    with ops.batch_statistics_frozen(model):
        y_frozen = tf.function(lambda t: bn(t, training=True))(x).numpy()
    # Same batch-statistics output, moving statistics untouched.
    np.testing.assert_allclose(y_frozen, y_free, atol=1e-6)
    assert np.array_equal(bn.moving_mean.numpy(), mean)
    assert np.array_equal(bn.moving_variance.numpy(), variance)
    # Restored after the block.
    bn(x, training=True)
    assert not np.array_equal(bn.moving_mean.numpy(), mean)


def test_batch_norm_path_selection():
    bn32 = ops.BatchNorm()
    bn32.build((1, 2, 2, 3))
    assert bn32.uses_fused(True) and not bn32.uses_fused(False)
    bn64 = ops.BatchNorm(dtype="float64")
    bn64.build((1, 2, 2, 3))
    assert not bn64.uses_fused(True)
    with pytest.raises(ValueError, match="fused=True"):
        ops.BatchNorm(fused=True, dtype="float64").build((1, 2, 2, 3))
    layer = ops.make_operation("sep_conv_3x3", 4, 1)
    assert ops.set_batch_norm_fused(layer, False) == 2
    assert all(bn.fused is False for bn in ops.batch_norm_layers(layer))


def _hvp_and_finite_difference(bn, x, v_x, v_g, h=1e-5):
    """HVP of L = sum(sin(BN(x))·w) wrt (x, gamma) by nested tapes, and by
    central differences of the gradient."""
    w = tf.constant(np.random.default_rng(1).normal(size=x.shape))

    def grads(x_):
        with tf.GradientTape() as tape:
            tape.watch(x_)
            loss = tf.reduce_sum(tf.sin(bn(x_, training=True)) * w)
        return tape.gradient(loss, [x_, bn.gamma])

    with tf.GradientTape() as outer:
        outer.watch(x)
        gx, gg = grads(x)
        dot = tf.reduce_sum(gx * v_x) + tf.reduce_sum(gg * v_g)
    hvp = outer.gradient(dot, [x, bn.gamma])
    gamma0 = bn.gamma.numpy()
    bn.gamma.assign(gamma0 + h * v_g)
    plus = grads(x + h * v_x)
    bn.gamma.assign(gamma0 - h * v_g)
    minus = grads(x - h * v_x)
    bn.gamma.assign(gamma0)
    fd = [(p - m) / (2 * h) for p, m in zip(plus, minus)]
    return [t.numpy() for t in hvp], [t.numpy() for t in fd]


def test_batch_norm_second_derivatives_are_exact_in_differentiable_path(rng):
    x = tf.constant(rng.normal(size=(3, 2, 2, 3)) * 2 + 1)
    v_x, v_g = tf.constant(rng.normal(size=x.shape)), rng.normal(size=3)
    bn = ops.BatchNorm(dtype="float64")  # float64 -> differentiable path
    bn.build(x.shape)
    bn.gamma.assign(rng.uniform(0.5, 2, 3))
    hvp, fd = _hvp_and_finite_difference(bn, x, v_x, v_g)
    for a, b in zip(hvp, fd):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Keras' BN stops the gradient through the mean inside the variance: its
    # second derivative differs (why tfnas has its own layer).
    keras_bn = keras.layers.BatchNormalization(epsilon=EPS, dtype="float64")
    keras_bn.build(x.shape)
    keras_bn.gamma.assign(bn.gamma.numpy())
    k_hvp, k_fd = _hvp_and_finite_difference(keras_bn, x, v_x, v_g)
    assert np.abs(k_hvp[0] - k_fd[0]).max() > 1e-3 * np.abs(k_fd[0]).max()


def _nested_hvp(bn, x, w, v_x, v_g):
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            loss = tf.reduce_sum(tf.sin(bn(x, training=True)) * w)
        gx, gg = inner.gradient(loss, [x, bn.gamma])
        dot = tf.reduce_sum(gx * v_x) + tf.reduce_sum(gg * v_g)
    return [t.numpy() for t in outer.gradient(dot, [x, bn.gamma])]


def test_batch_norm_fused_second_derivatives_match_float64(rng):
    # TensorFlow's gradient of the fused gradient kernel is exact, so the fast
    # path may serve HVPs and second-order DARTS in float32.
    shape = (4, 3, 3, 5)
    x, w, v_x = (rng.normal(size=shape) for _ in range(3))
    v_g, gamma = rng.normal(size=5), rng.uniform(0.5, 2, 5)
    results = []
    for fused, dtype in [(True, "float32"), (None, "float64")]:
        bn = ops.BatchNorm(fused=fused, dtype=dtype)
        bn.build(shape)
        bn.gamma.assign(gamma)
        assert bn.uses_fused(True) is (fused is True)
        c = lambda a: tf.constant(a, dtype)  # noqa: E731
        results.append(_nested_hvp(bn, c(x * 2 + 1), c(w), c(v_x), c(v_g)))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_batch_norm_fused_gradient_is_close_to_exact(rng):
    x = tf.constant((rng.normal(size=(4, 4, 4, 3)) * 2 + 1).astype(np.float32))
    results = []
    for fused in (True, False):
        bn = ops.BatchNorm(fused=fused)
        bn.build(x.shape)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(bn(x, training=True)))
        results.append([g.numpy() for g in tape.gradient(loss, [x, bn.gamma, bn.beta])])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


# -- dtype and serialisation -----------------------------------------------------------

def test_operations_work_under_float64_policy():
    x = tf.random.normal([2, 8, 8, 4], dtype=tf.float64)
    for name in ALL_OPS:
        layer = ops.make_operation(name, 4, 2, dtype="float64")
        y = layer(x, training=True)
        assert y.dtype == tf.float64, name
        assert all(v.dtype == "float64" for v in layer.weights), name


def test_operation_configs_round_trip():
    for name in ALL_OPS:
        for stride in (1, 2):
            layer = ops.make_operation(name, 4, stride, affine=False)
            clone = layer.__class__.from_config(layer.get_config())
            assert clone.get_config() == layer.get_config()
            clone.build((1, 8, 8, 4))
            assert ops.operation_parameter_count(name, 4, stride, False) == \
                sum(int(np.prod(v.shape)) for v in clone.trainable_weights)


def test_keras_file_round_trip_without_warnings(tmp_path):
    inputs = keras.Input((8, 8, 4))
    branches = [ops.make_operation(name, 4, stride)(inputs) for name in ALL_OPS for stride in (1, 2)
                if stride == 2 or name != "none"]
    pooled = [keras.layers.GlobalAveragePooling2D()(b) for b in branches]
    model = keras.Model(inputs, keras.layers.Concatenate()(pooled))
    path = tmp_path / "ops.keras"
    model.save(path)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(path)
    assert not [w for w in caught if "keras" in str(w.filename) or "build" in str(w.message)], \
        [str(w.message) for w in caught]
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
