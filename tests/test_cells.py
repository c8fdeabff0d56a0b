"""Evaluation cell wiring, reduction, drop path."""

import numpy as np
import tensorflow as tf

from tfnas import genotypes, ops
from tfnas.resolve import get_genotype
from tfnas.cells import Cell, DropPath
from tfnas.plan import cell_parameter_count

# Every edge an identity: node2 = s0 + s1, node3 = s1 + n2, node4 = s0 + n3.
ALL_SKIP = genotypes.Cell(
    [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 1), ("skip_connect", 2),
     ("skip_connect", 0), ("skip_connect", 3)], [2, 3, 4])


def f64(x):
    return tf.constant(x, tf.float64)


def test_cell_wires_nodes_and_concat_as_the_genotype_says():
    rng = np.random.default_rng(0)
    cell = Cell(ALL_SKIP, 4, dtype="float64")
    s0, s1 = rng.normal(size=(2, 8, 8, 6)), rng.normal(size=(2, 8, 8, 5))
    out = cell([f64(s0), f64(s1)], training=False).numpy()
    p0 = cell.preprocess0(f64(s0), training=False).numpy()
    p1 = cell.preprocess1(f64(s1), training=False).numpy()
    n2 = p0 + p1
    n3 = p1 + n2
    n4 = p0 + n3
    np.testing.assert_allclose(out, np.concatenate([n2, n3, n4], axis=-1), atol=1e-12)
    assert cell.output_channels == 12 and isinstance(cell.preprocess0, ops.ReLUConvBN)


def test_reduction_cell_strides_only_edges_from_inputs():
    g = get_genotype("DARTS_V2")
    reduce = g.cell("reduce")
    cell = Cell(reduce, 8, reduction=True, reduction_prev=True)
    # s0 comes from before the previous reduction: twice the resolution.
    out = cell([tf.zeros([2, 16, 16, 12]), tf.zeros([2, 8, 8, 12])], training=True)
    assert tuple(out.shape) == (2, 4, 4, 8 * len(reduce.concat))
    assert isinstance(cell.preprocess0, ops.FactorizedReduce)
    for (op, index), layer in zip(reduce.edges, cell.edge_ops):
        stride = getattr(layer, "stride", 2 if isinstance(layer, ops.FactorizedReduce) else 1)
        assert stride == (2 if index < 2 else 1), (op, index)
    assert tuple(cell.compute_output_shape([(2, 16, 16, 12), (2, 8, 8, 12)])) == (2, 4, 4, 32)


def test_cell_parameter_count_formula():
    g = get_genotype("AmoebaNet")  # conv_7x1_1x7, sep_conv_7x7, 5 nodes
    for kind, reduction, prev in [("normal", False, False), ("normal", False, True), ("reduce", True, False)]:
        cell = Cell(g.cell(kind), 6, reduction=reduction, reduction_prev=prev)
        s0 = (1, 16 if prev else 8, 16 if prev else 8, 10)
        cell.build([s0, (1, 8, 8, 14)])
        built = sum(int(np.prod(v.shape)) for v in cell.trainable_weights)
        assert cell_parameter_count(g.cell(kind), 10, 14, 6, reduction, prev) == built


def test_cell_config_round_trip():
    cell = Cell(get_genotype("DARTS_V2").cell("normal"), 4, reduction_prev=True)
    clone = Cell.from_config(cell.get_config())
    assert clone.cell == cell.cell and clone.get_config() == cell.get_config()


def test_drop_path_per_sample_rescaled_and_only_in_training():
    x = tf.ones([4000, 2, 2, 3])
    layer = DropPath(seed=3)
    p = tf.Variable(0.3)
    y = layer(x, p, training=True).numpy()
    per_sample = y.reshape(4000, -1)
    # each sample entirely dropped or entirely kept and scaled by 1/(1-p)
    kept = per_sample[per_sample != 0]
    np.testing.assert_allclose(kept, 1 / 0.7, rtol=1e-6)
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert abs((per_sample[:, 0] == 0).mean() - 0.3) < 0.03
    assert np.array_equal(layer(x, p, training=False).numpy(), x.numpy())
    p.assign(0.0)
    assert np.array_equal(layer(x, p, training=True).numpy(), x.numpy())


def test_drop_path_probability_changes_without_retracing():
    layer = DropPath(seed=0)
    p = tf.Variable(0.0)
    traces = []

    @tf.function
    def f(x):
        traces.append(1)
        return layer(x, p, training=True)

    x = tf.ones([64, 1, 1, 1])
    assert np.all(f(x).numpy() == 1)
    p.assign(0.5)
    y = f(x).numpy()
    assert 0 < (y == 0).sum() < 64 and len(traces) == 1


def test_drop_path_exempts_identity_edges():
    rng = np.random.default_rng(1)
    s0, s1 = f64(rng.normal(size=(8, 4, 4, 4))), f64(rng.normal(size=(8, 4, 4, 4)))
    skip = Cell(ALL_SKIP, 4, dtype="float64")
    ref = skip([s0, s1], training=True)
    np.testing.assert_array_equal(skip([s0, s1], drop_prob=0.9, training=True).numpy(), ref.numpy())
    pools = genotypes.Cell([("max_pool_3x3", 0), ("max_pool_3x3", 1)], [2])
    cell = Cell(pools, 4, dtype="float64")
    dropped = cell([s0, s1], drop_prob=0.9, training=True).numpy()
    assert (np.abs(dropped).reshape(8, -1).max(1) == 0).any()  # some samples lost both paths
