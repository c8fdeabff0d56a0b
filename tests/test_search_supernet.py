"""Search network: parameter parity, cell-space configurations, BN second
derivatives and hypergradients on a tiny supernet."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from tfnas.genotypes import DARTS_OPS
from tfnas.ops import BatchNorm, batch_norm_layers
from tfnas.search.darts import BilevelSearch, DartsConfig
from tfnas.search.supernet import MixedOp, SearchNetwork
from tfnas.space import ENAS_SPACE, CellSpace


@pytest.mark.slow
def test_parameter_parity_with_reference():
    model = SearchNetwork(C=16, layers=8, num_classes=10).build_for((32, 32, 3))
    assert model.count_weights() == 1_930_618
    assert model.count_alphas() == 2 * 14 * 8
    assert model.alphas_normal.shape == (14, 8) and model.alphas_reduce.shape == (14, 8)
    a = np.concatenate([v.numpy().ravel() for v in model.alpha_variables])
    assert 5e-4 < a.std() < 2e-3  # 1e-3·N(0, 1)
    affine = [bn for bn in batch_norm_layers(model) if bn.affine]
    assert [bn.name for bn in affine] == ["stem_bn"]


def test_enas_space_is_a_configuration():
    model = SearchNetwork(C=4, layers=3, num_classes=5, space=ENAS_SPACE).build_for((8, 8, 3))
    assert model.alphas_normal.shape == (20, 5)
    assert all(len(edge.ops) == 5 for edge in model.cells[0].edges)  # no 'none' in ENAS
    # the supernet concatenates all 5 nodes; derivation applies the loose-ends rule
    assert model.cells[-1].compute_output_shape((2, 4, 4, 24), (2, 4, 4, 24))[-1] == 5 * 16
    assert model.classifier.kernel.shape == (5 * 16, 5)


def test_mixed_op_skips_none_without_changing_the_result():
    op = MixedOp(4, 1, DARTS_OPS)
    x = tf.random.normal((2, 6, 6, 4), seed=1)
    w = tf.nn.softmax(tf.random.normal((8,), seed=2))
    y = op(x, w, training=False)
    manual = sum(w[k] * layer(x, training=False) for k, layer in zip(op.op_indices, op.ops))
    assert op.op_indices == list(range(1, 8))  # 'none' (index 0) not computed
    np.testing.assert_allclose(y.numpy(), manual.numpy(), rtol=1e-6, atol=1e-6)


def _hvp(layer_fn, x, v, c):
    """Hessian-vector product of f(x) = Σ c·layer(x)² by double backprop."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            f = tf.reduce_sum(c * tf.square(layer_fn(x)))
        g = inner.gradient(f, x)
        gv = tf.reduce_sum(g * v)
    return outer.gradient(gv, x), g


def _fd_hvp(layer_fn, x, v, c, h=1e-5):
    def grad(z):
        with tf.GradientTape() as t:
            t.watch(z)
            f = tf.reduce_sum(c * tf.square(layer_fn(z)))
        return t.gradient(f, z)
    return (grad(x + h * v) - grad(x - h * v)) / (2 * h)


def test_batch_norm_second_derivatives():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(4, 3, 3, 2)) * 2 + 1)
    v = tf.constant(rng.normal(size=x.shape))
    c = tf.constant(rng.normal(size=x.shape))
    ours = BatchNorm(affine=False, fused=False, dtype="float64")
    keras_bn = keras.layers.BatchNormalization(center=False, scale=False, epsilon=1e-5,
                                               dtype="float64")
    for layer in (ours, keras_bn):
        fn = lambda z, layer=layer: layer(z, training=True)  # noqa: E731
        hvp, _ = _hvp(fn, x, v, c)
        reference = _fd_hvp(fn, x, v, c)  # finite differences of exact first derivatives
        err = np.abs(hvp.numpy() - reference.numpy()).max() / np.abs(reference.numpy()).max()
        if layer is ours:
            assert err < 1e-7, err
        else:
            # Keras stops the gradient of the mean inside the variance: first
            # derivatives are right, second derivatives are not.
            assert err > 1e-3, err


@pytest.fixture(scope="module")
def tiny_supernet_search():
    keras.utils.set_random_seed(3)
    space = CellSpace(DARTS_OPS, num_nodes=1, concat="all")
    model = SearchNetwork(C=4, layers=3, num_classes=3, space=space, dtype="float64",
                          alpha_seed=0)
    model.build_for((8, 8, 3))
    # Larger alphas than the 1e-3 init, so the mixture is not uniform.
    rng = np.random.default_rng(0)
    for a in model.alpha_variables:
        a.assign(rng.normal(size=a.shape))
    search = BilevelSearch(model, DartsConfig(order=2, hessian="exact", fd_radius=1e-7))
    for buf in search.weight_optimizer.buffers:
        buf.assign(rng.normal(scale=0.1, size=buf.shape))
    search.learning_rate.assign(0.05)
    x = rng.normal(size=(2, 6, 8, 8, 3))
    y = rng.integers(0, 3, size=(2, 6))
    batches = ((tf.constant(x[0]), tf.constant(y[0])), (tf.constant(x[1]), tf.constant(y[1])))
    return model, search, batches


@pytest.mark.slow
def test_finite_difference_matches_exact_on_tiny_supernet(tiny_supernet_search):
    model, search, (train, val) = tiny_supernet_search
    exact = search.alpha_gradient(train, val, hessian="exact")
    fd = search.alpha_gradient(train, val, hessian="fd")
    first = search.alpha_gradient(train, val, order=1)
    # The exact mode's max pools take the deterministic second derivative
    # (TensorFlow's MaxPoolGradGrad made this comparison fail 2-4 % of the time).
    graph = search._alpha_grad_fns[(2, "exact")].get_concrete_function(train, val).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "MaxPoolWithArgmax" in op_types and "MaxPoolGradGrad" not in op_types
    for e, f, o in zip(exact, fd, first):
        term = np.abs(e - o).max()
        assert term > 1e-6  # the second-order term is really there
        np.testing.assert_allclose(f, e, rtol=1e-5, atol=1e-5 * term)
