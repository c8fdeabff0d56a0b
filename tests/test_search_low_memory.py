"""SearchNetwork(low_memory=True) -- each cell's edges in ``tf.while_loop``s
over stacked per-edge variables, activations recomputed in the backward
pass -- computes the same function, gradients and BN-statistics updates as
the unrolled network given the same values, eager and under
``tf.function``."""

import numpy as np
import pytest

import tensorflow as tf

from tfnas.ops import batch_norm_layers
from tfnas.rundir import CheckpointError, RunDir
from tfnas.search.darts import BilevelSearch, DartsConfig
from tfnas.search.supernet import SearchNetwork
from tfnas.space import ENAS_SPACE, CellSpace


def _layout(model):
    """Where every value of ``model`` lives, keyed by what it is:
    ``(cell, edge, slot)`` for a mixed operation's variables (in the
    low-memory form a slice of a stacked variable), the path below the network
    for the rest (stem, preprocessing, classifier, alphas).
    Returns ``{key: (variable, index along the stack or None)}``."""
    where = {}
    for c, cell in enumerate(model.cells):
        if cell.low_memory:
            for stack, ids in zip(cell.edge_stacks, cell.edge_groups()):
                for i, var in enumerate(stack.stacked_variables):
                    where.update({(c, e, i): (var, k) for k, e in enumerate(ids)})
        else:
            for e, edge in enumerate(cell.edges):
                where.update({(c, e, i): (var, None) for i, var in enumerate(edge.variables)})
    placed = {id(var) for var, _ in where.values()}
    where.update({var.path.split("/", 1)[1]: (var, None)
                  for var in model.variables if id(var) not in placed})
    return where


def _by_key(model, variables=None, values=None):
    """``values`` (one per variable of ``variables``; default: the variables'
    own) keyed as in :func:`_layout`: comparable across the two forms."""
    variables = model.variables if variables is None else list(variables)
    values = [v.numpy() for v in variables] if values is None else values
    index = {id(v): np.asarray(x) for v, x in zip(variables, values)}
    return {key: index[id(var)] if k is None else index[id(var)][k]
            for key, (var, k) in _layout(model).items() if id(var) in index}


def _assert_same(a, b, **tolerances):
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_allclose(b[key], a[key], err_msg=str(key), **tolerances)


def _copy_values(source, target):
    values = _by_key(source)
    arrays = {id(v): v.numpy() for v in target.variables}
    for key, (var, k) in _layout(target).items():
        if k is None:
            arrays[id(var)] = values[key]
        else:
            arrays[id(var)][k] = values[key]
    for var in target.variables:
        var.assign(arrays[id(var)])


def _twins(space=None, layers=4, image=8):
    """An unrolled network and a low-memory one with the same values.
    4 layers: normal, reduction, reduction, normal (after a reduction)."""
    kwargs = {} if space is None else {"space": space}
    nets = [SearchNetwork(C=4, layers=layers, num_classes=5, alpha_seed=1, low_memory=low,
                          **kwargs).build_for((image, image, 3)) for low in (False, True)]
    _copy_values(*nets)
    return nets


def _batch(seed=0, n=4, image=8):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(n, image, image, 3)).astype("float32")),
            tf.constant(rng.integers(0, 5, n)))


def _statistics(model):
    return _by_key(model, model.non_trainable_variables)


def _loss_and_gradients(model, x, y):
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    variables = model.weight_variables + model.alpha_variables
    return loss, tape.gradient(loss, variables)


@pytest.fixture(scope="module")
def twins():
    nets = _twins()
    values = [[v.numpy() for v in model.variables] for model in nets]

    def reset():
        for model, saved in zip(nets, values):
            for var, value in zip(model.variables, saved):
                var.assign(value)
        return nets
    return reset


def test_low_memory_is_a_configuration(twins, tmp_path):
    unrolled, low = twins()
    assert low.count_weights() == unrolled.count_weights()
    assert _by_key(low).keys() == _by_key(unrolled).keys()
    # alike edges share stacked variables: far fewer tensors than the unrolled form
    assert len(low.weight_variables) < len(unrolled.weight_variables) / 3
    assert [c.low_memory for c in low.cells] == [True] * 4
    # trace-time switches (e.g. frozen BN statistics) reach the stacks' templates
    template_bns = batch_norm_layers(low.cells[0].edge_stacks[0].template)
    assert template_bns and {id(l) for l in template_bns} <= {id(l) for l in batch_norm_layers(low)}
    clone = SearchNetwork.from_config(low.get_config())
    assert clone.low_memory and clone.cells[0].low_memory
    # every edge initialised on its own, with the unrolled form's distribution
    fresh = SearchNetwork(C=4, layers=4, num_classes=5, low_memory=True).build_for((8, 8, 3))
    kernel = next(v for v in fresh.cells[0].edge_stacks[0].stacked_variables if v.trainable)
    slices = kernel.numpy()
    assert all(not np.array_equal(slices[0], other) for other in slices[1:])
    edge_kernel = next(v for v in unrolled.cells[0].edges[0].variables if v.trainable)
    assert edge_kernel.shape == slices.shape[1:]
    bound = np.abs(edge_kernel.numpy()).max()
    assert 0.5 * bound < np.abs(slices).max() < 2 * bound
    # run checkpoints hold the stacked variables (not the templates') and
    # tell the two forms apart
    run = RunDir(tmp_path / "run")
    run.save_checkpoint({"model": fresh}, {}, step=1)
    assert not np.array_equal(low.weight_variables[-1].numpy(), fresh.weight_variables[-1].numpy())
    run.restore_checkpoint({"model": low})
    for a, b in zip(low.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(CheckpointError):
        run.restore_checkpoint({"model": unrolled})


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
    _assert_same(*[_by_key(m, m.weight_variables + m.alpha_variables, g)
                   for m, g in ((unrolled, grads_a), (low, grads_b))], rtol=1e-4, atol=1e-5)
    # every edge's BN statistics were written, as by the unrolled network
    after_a, after_b = _statistics(unrolled), _statistics(low)
    assert all(not np.array_equal(after_b[key], before[key]) for key in before)
    _assert_same(after_a, after_b, rtol=1e-5, atol=1e-6)
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
    before = _statistics(low)
    passes = []
    for search in searches:
        w, a = search._values()
        loss, acc, gw, ga, state = tf.function(search._pass_impl, autograph=False)(x, y, w, a)
        passes.append((float(loss), float(acc), [g.numpy() for g in ga],
                       _by_key(search.model, search.weight_vars, gw),
                       _by_key(search.model, search.state_vars, state)))
    (*scalars_a, ga_a, gw_a, state_a), (*scalars_b, ga_b, gw_b, state_b) = passes
    np.testing.assert_allclose(scalars_b, scalars_a, rtol=1e-5)
    np.testing.assert_allclose(ga_b, ga_a, rtol=1e-4, atol=1e-5)
    _assert_same(gw_a, gw_b, rtol=1e-4, atol=1e-5)
    _assert_same(state_a, state_b, rtol=1e-5, atol=1e-6)
    # the pass wrote nothing itself; it returned every BN's new statistics
    _assert_same(before, _statistics(low), rtol=0, atol=0)
    assert all(not np.array_equal(state_b[key], before[key]) for key in before)
    with pytest.raises(ValueError, match="second derivatives"):
        searches[1].alpha_gradient((x, y), _batch(2), hessian="exact")


def test_other_spaces_loop_over_their_edges():
    space = CellSpace.from_dict(dict(ENAS_SPACE.to_dict(), num_nodes=3))  # 9 edges, 5 operations
    unrolled, low = _twins(space=space, layers=3)
    x, _ = _batch(3)
    np.testing.assert_allclose(low(x, training=True).numpy(), unrolled(x, training=True).numpy(),
                               rtol=1e-5, atol=1e-5)
    _assert_same(_statistics(unrolled), _statistics(low), rtol=1e-5, atol=1e-6)
