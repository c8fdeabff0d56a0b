"""Bilevel DARTS steps and hypergradients on a tiny hand-written mixed model."""

from dataclasses import replace

import numpy as np
import pytest

import keras
import tensorflow as tf

from tfnas.search.darts import BilevelSearch, DartsConfig, ReferenceAdam


class TinyMixed(keras.Model):
    """x -> softmax(alpha)-weighted sum of two smooth ops -> dense logits."""

    def __init__(self, dtype="float64", seed=0, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        init = keras.initializers.GlorotUniform(seed=seed)
        self.op_a = keras.layers.Dense(5, activation="tanh", kernel_initializer=init, dtype=dtype)
        self.op_b = keras.layers.Dense(5, activation="sigmoid",
                                       kernel_initializer=keras.initializers.GlorotUniform(seed + 1),
                                       dtype=dtype)
        self.head = keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed + 2),
                                       dtype=dtype)
        self.alphas = self.add_weight(shape=(1, 2), initializer=keras.initializers.RandomNormal(
            stddev=0.5, seed=seed + 3), name="alphas", dtype=dtype)

    def call(self, x, training=False):
        w = tf.nn.softmax(self.alphas[0])
        return self.head(w[0] * self.op_a(x) + w[1] * self.op_b(x))

    @property
    def alpha_variables(self):
        return [self.alphas]

    @property
    def weight_variables(self):
        return [v for v in self.trainable_variables if v is not self.alphas]


def _batches(dtype=np.float64, n=8, seed=0):
    rng = np.random.default_rng(seed)
    xt, xv = rng.normal(size=(2, n, 4)).astype(dtype)
    yt, yv = rng.integers(0, 3, size=(2, n))
    return (tf.constant(xt), tf.constant(yt)), (tf.constant(xv), tf.constant(yv))


def _tiny_search(config, dtype="float64"):
    model = TinyMixed(dtype=dtype)
    model(tf.zeros((1, 4), dtype))
    search = BilevelSearch(model, config)
    # Non-zero momentum buffers, so the virtual step's momentum term is exercised.
    rng = np.random.default_rng(5)
    for buf in search.weight_optimizer.buffers:
        buf.assign(rng.normal(size=buf.shape).astype(buf.dtype.as_numpy_dtype))
    search.learning_rate.assign(0.1)
    return model, search


class _Tiny:
    """One tiny search per module (its traced functions are reused); every
    test starts from the same variable values."""

    def __init__(self, fd_radius):
        self.model, self.search = _tiny_search(DartsConfig(order=2, hessian="exact",
                                                           fd_radius=fd_radius))
        self.variables = (list(self.model.variables) + list(self.search.weight_optimizer.buffers)
                          + list(self.search.arch_optimizer.variables))
        self.values = [v.numpy() for v in self.variables]

    def reset(self, **config):
        for var, value in zip(self.variables, self.values):
            var.assign(value)
        self.search.config = replace(self.search.config, **config)
        return self.model, self.search


@pytest.fixture(scope="module")
def tiny():
    return _Tiny(fd_radius=1e-7)


@pytest.fixture(scope="module")
def tiny_reference_radius():
    return _Tiny(fd_radius=0.01)


def _independent_unrolled(model, search, train, val):
    """∇α L_val(w') − ξ·∇α⟨∇w L_train(w), v⟩ with variables assigned in eager
    mode and an exact (double-backprop) mixed second derivative."""
    cfg = search.config
    xi = float(search.learning_rate.numpy())
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    w = model.weight_variables
    a = model.alpha_variables
    w0 = [v.numpy() for v in w]
    with tf.GradientTape() as tape:
        loss = ce(train[1], model(train[0], training=True))
    g = tape.gradient(loss, w)
    for var, g_i, buf in zip(w, g, search.weight_optimizer.buffers):
        var.assign(var - xi * (cfg.momentum * buf + g_i + cfg.weight_decay * var))
    with tf.GradientTape() as tape:
        loss = ce(val[1], model(val[0], training=True))
    grads = tape.gradient(loss, w + a)
    v, d_alpha = grads[:len(w)], grads[len(w):]
    for var, value in zip(w, w0):
        var.assign(value)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = ce(train[1], model(train[0], training=True))
        gw = inner.gradient(loss, w)
        dot = tf.add_n([tf.reduce_sum(gi * vi) for gi, vi in zip(gw, v)])
    mixed = outer.gradient(dot, a)
    return [(d - xi * m).numpy() for d, m in zip(d_alpha, mixed)]


def test_exact_hypergradient_matches_independent_computation(tiny):
    model, search = tiny.reset()
    train, val = _batches()
    exact = search.alpha_gradient(train, val)
    independent = _independent_unrolled(model, search, train, val)
    first = search.alpha_gradient(train, val, order=1)
    np.testing.assert_allclose(exact[0], independent[0], rtol=1e-10, atol=1e-13)
    # ...and the second-order term is not negligible here (the test can fail).
    assert np.abs(exact[0] - first[0]).max() > 1e-4


def test_finite_difference_matches_exact_in_float64(tiny):
    model, search = tiny.reset()
    train, val = _batches(seed=1)
    fd = search.alpha_gradient(train, val, hessian="fd")
    exact = search.alpha_gradient(train, val, hessian="exact")
    np.testing.assert_allclose(fd[0], exact[0], rtol=1e-6, atol=1e-9)


def test_reference_radius_is_divided_by_two_epsilon(tiny, tiny_reference_radius):
    # With the reference ε = 0.01/‖v‖ on a smooth model, the central difference
    # is accurate to O(ε²); getting the 2ε wrong would be off by a factor 4.
    _, search = tiny.reset()
    train, val = _batches(seed=2)
    first = search.alpha_gradient(train, val, order=1)
    exact = search.alpha_gradient(train, val, hessian="exact")
    _, reference = tiny_reference_radius.reset()
    fd = reference.alpha_gradient(train, val, hessian="fd")
    fd_term, exact_term = fd[0] - first[0], exact[0] - first[0]
    assert np.abs(exact_term).max() > 1e-5
    np.testing.assert_allclose(fd[0], exact[0], rtol=1e-3, atol=1e-3 * np.abs(exact_term).max())
    assert fd_term.shape == exact_term.shape


def test_reference_adam_matches_pytorch_formulas():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3,))
    grads = [rng.normal(size=(3,)) for _ in range(3)]
    var = tf.Variable(w0)
    adam = ReferenceAdam([var], 0.01, 0.5, 0.999, 1e-8, weight_decay=1e-3)
    m = v = np.zeros(3)
    w = w0.copy()
    for t, g in enumerate(grads, start=1):
        adam.apply([tf.constant(g)], [var])
        d = g + 1e-3 * w
        m = 0.5 * m + 0.5 * d
        v = 0.999 * v + 0.001 * d * d
        w = w - 0.01 * (m / (1 - 0.5 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(var.numpy(), w, rtol=1e-12)


@pytest.mark.parametrize("order,hessian", [(1, "fd"), (2, "fd"), (2, "exact")])
def test_search_step_updates_alphas_then_weights(tiny, order, hessian):
    model, search = tiny.reset(order=order, hessian=hessian)
    train, val = _batches(seed=3)
    expected_alpha_grad = search.alpha_gradient(train, val)
    alphas0 = model.alphas.numpy().copy()
    weights0 = [v.numpy().copy() for v in model.weight_variables]
    metrics = search.search_step(train, val)
    # Adam's first step moves each alpha by ~lr against the sign of its gradient
    # (L2 decay included).
    g = expected_alpha_grad[0] + 1e-3 * alphas0
    np.testing.assert_allclose(model.alphas.numpy() - alphas0, -3e-4 * np.sign(g), rtol=1e-4)
    assert any(np.abs(v.numpy() - w).max() > 0 for v, w in zip(model.weight_variables, weights0))
    assert set(metrics) >= {"loss", "acc", "alpha_loss", "alpha_acc"}
    assert np.isfinite(float(metrics["loss"]))
