"""Hessian-vector products of tfnas.probes against exact float64 Hessians."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tfnas.ops import Pool
from tfnas.probes import ModelLoss, ProbeError, as_batches, snapshot
from tfnas.probes.core import HVP_MODES

F64 = "float64"


def small_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((5,), dtype=F64),
        keras.layers.Dense(6, activation="tanh", dtype=F64),
        keras.layers.BatchNormalization(dtype=F64),
        keras.layers.Dense(3, dtype=F64),
    ])
    # Non-trivial BN statistics, so inference and training modes differ.
    bn = model.layers[1]
    bn.moving_mean.assign(np.linspace(-0.2, 0.3, 6))
    bn.moving_variance.assign(np.linspace(0.5, 1.5, 6))
    return model


def small_convnet(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6, 6, 2), dtype=F64),
        keras.layers.Conv2D(3, 3, padding="same", use_bias=False, dtype=F64),
        keras.layers.BatchNormalization(dtype=F64),
        keras.layers.Activation("softplus", dtype=F64),
        keras.layers.DepthwiseConv2D(3, strides=2, use_bias=False, dtype=F64),
        keras.layers.GlobalAveragePooling2D(dtype=F64),
        keras.layers.Dense(4, dtype=F64),
    ])


def classification_data(input_shape, num_classes, n=40, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + tuple(input_shape))
    y = rng.integers(0, num_classes, n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def exact_hessian(model, loss_fn, data, training=False, variables=None):
    """Dense Hessian of the mean loss over ``data`` w.r.t. the probed variables,
    through ``model.stateless_call`` on one flat parameter tensor (a code path
    independent of ModelLoss's)."""
    probe = ModelLoss(model, loss_fn, variables)
    chosen = {id(v): i for i, v in enumerate(probe.variables)}
    batches = as_batches(data)
    total = sum(int(x.shape[0]) for x, _ in batches)
    theta = tf.constant(probe.parameters())

    def loss_of(flat):
        parts = probe._split(flat)
        trainable = [parts[chosen[id(v)]] if id(v) in chosen else v.value
                     for v in model.trainable_variables]
        state = [v.value for v in model.non_trainable_variables]
        out = 0.0
        for x, y in batches:
            logits, _ = model.stateless_call(trainable, state, x, training=training)
            out += tf.reduce_mean(probe.loss_fn(y, logits)) * int(x.shape[0]) / total
        return out

    with tf.GradientTape() as outer:
        outer.watch(theta)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            value = loss_of(theta)
        grad = inner.gradient(value, theta)
    return outer.jacobian(grad, theta).numpy()


@pytest.fixture(scope="module")
def mlp_case():
    model = small_mlp()
    data = classification_data((5,), 3)
    return model, data, {False: exact_hessian(model, LOSS, data, False),
                         True: exact_hessian(model, LOSS, data, True)}


# Each HVP mode in each BN mode once (tracing dominates the test time).
@pytest.mark.parametrize("mode, training", [("forward_over_back", False), ("back_over_back", True),
                                            ("back_over_back", False), ("forward_over_back", True)])
def test_hvp_matches_exact_hessian(mlp_case, mode, training):
    model, data, hessians = mlp_case
    before = snapshot(model)
    probe = ModelLoss(model, LOSS, training=training, hvp_mode=mode)
    batches = as_batches(data)
    rng = np.random.default_rng(1)
    for _ in range(3):
        v = rng.standard_normal(probe.size)
        expected = hessians[training] @ v
        # Under tf.function (the compiled path) ...
        np.testing.assert_allclose(probe.hvp(batches, v), expected, rtol=0, atol=1e-10)
    # ... and eagerly (the same graph code run op by op), on one batch.
    x, y = batches[0]
    eager = probe._hvp_graph(x, y, tf.constant(v))[1].numpy()
    np.testing.assert_allclose(eager, probe.batch_hvp(x, y, v), rtol=0, atol=1e-12)
    # Traced once for all batches (16, 16, 8 examples) and vectors.
    assert probe.tracing_counts["hvp"] == 1
    assert probe.num_hvps == 10
    # Training-mode BN statistics and weights are left exactly as they were.
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(model)))


def test_hessian_is_symmetric_and_modes_differ(mlp_case):
    _, _, hessians = mlp_case
    for h in hessians.values():
        np.testing.assert_allclose(h, h.T, atol=1e-12)
    assert np.abs(hessians[True] - hessians[False]).max() > 1e-3   # BN mode matters


def test_hvp_over_variable_subset_is_a_block_of_the_full_hessian(mlp_case):
    model, data, hessians = mlp_case
    last = model.layers[-1]
    probe = ModelLoss(model, LOSS, variables=[last])
    full = ModelLoss(model, LOSS)
    index = np.concatenate([np.arange(full.offsets[i], full.offsets[i + 1])
                            for i, v in enumerate(full.variables) if any(v is w for w in last.weights)])
    v = np.random.default_rng(2).standard_normal(probe.size)
    block = hessians[False][np.ix_(index, index)]
    np.testing.assert_allclose(probe.hvp(as_batches(data), v), block @ v, rtol=0, atol=1e-10)
    by_path = ModelLoss(model, LOSS, variables=[w.path for w in last.weights])
    assert [w.path for w in by_path.variables] == [w.path for w in probe.variables]


def test_hvp_convnet_with_depthwise_and_bn_modes_agree():
    # Conv + BN (training mode) + depthwise: forward-over-back and back-over-back
    # are independent autodiff paths; they agree, and u.Hv = v.Hu (symmetry).
    # (The exact dense Hessian of a convnet is too slow to form in the unit test.)
    model = small_convnet()
    data = as_batches(classification_data((6, 6, 2), 4, n=12, batch=5))
    forward = ModelLoss(model, LOSS, training=True, hvp_mode="forward_over_back")
    backward = ModelLoss(model, LOSS, training=True, hvp_mode="back_over_back")
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((2, forward.size))
    hv = forward.hvp(data, v)
    np.testing.assert_allclose(hv, backward.hvp(data, v), rtol=0, atol=1e-10 * np.abs(hv).max())
    assert abs(u @ hv - v @ forward.hvp(data, u)) < 1e-10 * abs(u @ hv)
    assert np.abs(hv).max() > 1e-3


def test_hvp_through_max_pools_matches_finite_differences():
    # tfnas max pools (stride 1 and 2): both modes trace the pools'
    # deterministic second derivative (not TensorFlow's MaxPoolGradGrad) and
    # agree with central differences of the exact gradient.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6, 6, 2), dtype=F64),
        keras.layers.Conv2D(3, 3, padding="same", use_bias=False, dtype=F64),
        keras.layers.Activation("softplus", dtype=F64),
        Pool("max", 1, dtype=F64),
        Pool("max", 2, dtype=F64),
        keras.layers.Conv2D(3, 1, activation="softplus", dtype=F64),
        keras.layers.GlobalAveragePooling2D(dtype=F64),
        keras.layers.Dense(4, dtype=F64),
    ])
    data = as_batches(classification_data((6, 6, 2), 4, n=12, batch=6))
    probe = ModelLoss(model, LOSS)
    v = np.random.default_rng(0).standard_normal(probe.size)
    hvps = [ModelLoss(model, LOSS, hvp_mode=mode).hvp(data, v) for mode in HVP_MODES]
    theta, h = probe.parameters(), 1e-6

    def gradient_at(flat):
        for var, value in zip(probe.variables, probe.unflatten(flat)):
            var.assign(value)
        return probe.gradient(data)

    fd = (gradient_at(theta + h * v) - gradient_at(theta - h * v)) / (2 * h)
    gradient_at(theta)
    assert np.abs(fd).max() > 1e-3
    for hv in hvps:
        np.testing.assert_allclose(hv, fd, rtol=0, atol=1e-6 * np.abs(fd).max())


def test_gradient_and_loss_match_plain_tape(mlp_case):
    model, data, _ = mlp_case
    probe = ModelLoss(model, LOSS)
    x, y = next(iter(data))
    with tf.GradientTape() as tape:
        value = tf.reduce_mean(probe.loss_fn(y, model(x, training=False)))
    expected = np.concatenate([g.numpy().ravel() for g in tape.gradient(value, model.trainable_variables)])
    loss, grad = probe.batch_gradient(x, y)
    np.testing.assert_allclose(grad, expected, atol=1e-14)
    assert abs(loss - float(value)) < 1e-14


def test_flatten_roundtrip_and_errors(mlp_case):
    model, data, _ = mlp_case
    probe = ModelLoss(model, LOSS)
    flat = np.arange(probe.size, dtype=float)
    again = probe.flatten(probe.unflatten(flat))
    np.testing.assert_array_equal(flat, again)
    with pytest.raises(ProbeError):
        probe.unflatten(flat[:-1])
    with pytest.raises(ProbeError):
        probe.batch_hvp(*next(iter(data)), flat[:-1])
    with pytest.raises(ProbeError):
        ModelLoss(model, LOSS, hvp_mode="sideways")
    with pytest.raises(ProbeError):
        ModelLoss(model, LOSS, variables=["no/such/variable"])
    with pytest.raises(ProbeError):
        as_batches(tf.data.Dataset.from_tensor_slices((np.zeros((0, 5)), np.zeros(0))).batch(4))


def test_keras_loss_object_is_run_in_the_probe_dtype(mlp_case):
    # A float32 Keras Loss would cast float64 logits down; the probe uses a float64 copy.
    model, _, _ = mlp_case
    probe = ModelLoss(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert probe.loss_fn.dtype == "float64"
