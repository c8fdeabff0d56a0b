"""SearchNetwork(low_memory=True) -- each normal cell's edges in one
``tf.while_loop``, activations recomputed in the backward pass -- computes
the same function, gradients and BN-statistics updates as the unrolled
network, eager and under ``tf.function``."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from tfnas.search.darts import BilevelSearch, DartsConfig
from tfnas.search.supernet import SearchNetwork
from tfnas.space import ENAS_SPACE, CellSpace


def _twins(space=None, layers=4, image=8):
    """An unrolled network and a low-memory one with the same values.
    4 layers: normal, reduction, reduction, normal (after a reduction)."""
    kwargs = {} if space is None else {"space": space}
    nets = [SearchNetwork(C=4, layers=layers, num_classes=5, alpha_seed=1, low_memory=low,
                          **kwargs).build_for((image, image, 3)) for low in (False, True)]
    nets[1].set_weights(nets[0].get_weights())
    return nets


def _batch(seed=0, n=4, image=8):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(n, image, image, 3)).astype("float32")),
            tf.constant(rng.integers(0, 5, n)))


def _statistics(model):
    return [v.numpy() for v in model.non_trainable_variables]


def _loss_and_gradients(model, x, y):
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    variables = model.weight_variables + model.alpha_variables
    return loss, tape.gradient(loss, variables)


@pytest.fixture(scope="module")
def twins():
    unrolled, low = _twins()
    values = [v.numpy() for v in unrolled.variables]

    def reset():
        for model in (unrolled, low):
            for var, value in zip(model.variables, values):
                var.assign(value)
        return unrolled, low
    return reset


def test_low_memory_is_a_configuration(twins):
    unrolled, low = twins()
    assert low.count_weights() == unrolled.count_weights()
    assert [c.low_memory for c in low.cells] == [True] * 4
    clone = SearchNetwork.from_config(low.get_config())
    assert clone.low_memory and clone.cells[0].low_memory


@pytest.mark.parametrize("mode", ["eager", "tf.function"])
def test_same_logits_gradients_and_statistics(twins, mode):
    unrolled, low = twins()
    x, y = _batch()
    before = _statistics(low)
    results = []
    for model in (unrolled, low):
        fn = _loss_and_gradients
        if mode == "tf.function":
            fn = tf.function(_loss_and_gradients, autograph=False)
        results.append(fn(model, x, y))
    (loss_a, grads_a), (loss_b, grads_b) = results
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-6)
    assert all(g is not None for g in grads_b)
    for ga, gb in zip(grads_a, grads_b):
        np.testing.assert_allclose(gb.numpy(), ga.numpy(), rtol=1e-4, atol=1e-5)
    # every edge's BN statistics were written, as by the unrolled network
    after_a, after_b = _statistics(unrolled), _statistics(low)
    changed = sum(not np.array_equal(b, a) for a, b in zip(before, after_b))
    assert changed == len(before)
    for a, b in zip(after_a, after_b):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # inference mode reads those statistics
    np.testing.assert_allclose(low(x, training=False).numpy(), unrolled(x, training=False).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_bilevel_search_pass_agrees(twins):
    """The search's network pass: evaluated in a StatelessScope at given
    values, BN writes returned as state (second order's finite differences
    are made of such passes)."""
    unrolled, low = twins()
    x, y = _batch(1)
    searches = [BilevelSearch(m, DartsConfig(order=2, hessian="fd")) for m in (unrolled, low)]
    passes = []
    for search in searches:
        w, a = search._values()
        passes.append(tf.function(search._pass_impl, autograph=False)(x, y, w, a))
    for part_a, part_b in zip(*passes):
        for a, b in zip(tf.nest.flatten(part_a), tf.nest.flatten(part_b)):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)
    # the pass wrote nothing itself; it returned every BN's new statistics
    assert all(np.array_equal(v.numpy(), u.numpy())
               for v, u in zip(low.non_trainable_variables, unrolled.non_trainable_variables))
    with pytest.raises(ValueError, match="second derivatives"):
        searches[1].alpha_gradient((x, y), _batch(2), hessian="exact")


def test_other_spaces_loop_over_their_edges():
    space = CellSpace.from_dict(dict(ENAS_SPACE.to_dict(), num_nodes=3))  # 9 edges, 5 operations
    unrolled, low = _twins(space=space, layers=3)
    x, _ = _batch(3)
    np.testing.assert_allclose(low(x, training=True).numpy(), unrolled(x, training=True).numpy(),
                               rtol=1e-5, atol=1e-5)
    for a, b in zip(_statistics(unrolled), _statistics(low)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
