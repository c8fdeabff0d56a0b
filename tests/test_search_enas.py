"""ENAS's shared child and loop, and random search with weight sharing."""

import numpy as np
import pytest
import tensorflow as tf

from tfnas.search.enas import cosine_restart_learning_rate, topology_stats
from tfnas.search.enas_child import EnasChild
from tfnas.search.enas_controller import (ENAS_MICRO_SPACE, UniformSampler, arch_to_genotype,
                                          reference_loose_ends, resolve_sampling_space)
from tfnas.space import CellSpace

# Two nodes keep tracing short; every operation of ENAS's space.
TINY_SPACE = CellSpace(ENAS_MICRO_SPACE.operations, 2, "loose_ends")


def test_cosine_with_warm_restarts_restarts_after_10_30_70():
    lr = [cosine_restart_learning_rate(e, 0.05, 0.0005, 10, 2) for e in range(150)]
    assert lr[0] == pytest.approx(0.05)
    for restart in (10, 30, 70):
        assert lr[restart] == pytest.approx(0.05) and lr[restart - 1] < 0.002
    assert lr[5] == pytest.approx(0.0005 + 0.5 * (0.05 - 0.0005))
    assert lr[149] == pytest.approx(0.0005, abs=1e-4)


@pytest.fixture(scope="module")
def child():
    tf.keras.utils.set_random_seed(0)
    return EnasChild(TINY_SPACE, init_channels=4, layers=3, num_classes=10).build_for((8, 8, 3))


@pytest.fixture(scope="module")
def images():
    return tf.constant(np.random.default_rng(1).normal(size=(6, 8, 8, 3)).astype(np.float32))


def _bn(x, gamma=None, beta=None):
    mean, var = tf.nn.moments(x, [0, 1, 2])
    y = (x - mean) / tf.sqrt(var + 1e-5)
    return y if gamma is None else y * gamma + beta


def _operand(operand, x, index, op):
    """One operand computed directly from Python ints and sliced weights."""
    spec = operand.specs[op]
    if spec.family == "skip":
        return x
    if spec.family == "pool":
        if spec.pool == "max":
            return tf.nn.max_pool2d(x, 3, 1, "SAME")
        return tf.nn.avg_pool2d(x, 3, 1, "SAME")
    y = x
    for depthwise, pointwise, gamma, beta in operand.conv_weights[spec.name]:
        y = tf.nn.depthwise_conv2d(tf.nn.relu(y), depthwise[index], [1, 1, 1, 1], "SAME",
                                   dilations=[spec.dilation] * 2)
        y = _bn(tf.einsum("bhwc,cd->bhwd", y, pointwise[index]), gamma[index], beta[index])
    return y


def _cell(cell, s0, s1, row):
    """A cell built directly: the sampled operands only, the reference's
    concatenation of the loose ends, its 1x1 conv rows, then BN."""
    pre = None
    if cell.reduction:
        pre = cell.pre_reduction(s1, training=True)
        s0, s1 = s1, pre
    nodes = [s0 if cell.calibrate0 is None else cell.calibrate0(s0, training=True),
             s1 if cell.calibrate1 is None else cell.calibrate1(s1, training=True)]
    for i in range(cell.space.num_nodes):
        a, op_a, b, op_b = (int(v) for v in row[4 * i: 4 * i + 4])
        nodes.append(_operand(cell.operands[2 * i], nodes[a], a, op_a)
                     + _operand(cell.operands[2 * i + 1], nodes[b], b, op_b))
    ends = reference_loose_ends(row)
    kernel = tf.concat([cell.out_kernel[n] for n in ends], axis=0)
    concat = tf.nn.relu(tf.concat([nodes[n] for n in ends], axis=-1))
    gamma, beta = cell.out_bn.gamma, cell.out_bn.beta
    out = _bn(tf.einsum("bhwc,cd->bhwd", concat, kernel), gamma, beta)
    return (pre, out) if cell.reduction else out


def _direct(child, x, arch):
    s0 = s1 = _bn(child.stem_conv(x), child.stem_bn.gamma, child.stem_bn.beta)
    for cell in child.cells:
        if cell.reduction:
            s0, s1 = _cell(cell, s0, s1, arch[1])
        else:
            s0, s1 = s1, _cell(cell, s0, s1, arch[0])
    pooled = tf.reduce_mean(tf.nn.relu(s1), axis=[1, 2])
    return tf.matmul(pooled, child.classifier.kernel)


def test_fixed_architecture_is_the_directly_built_network(child, images):
    sampler = UniformSampler(TINY_SPACE, seed=5)
    archs, _, _ = sampler.sample_many(4)
    for arch in archs.numpy():
        shared = child((images, arch), training=False).numpy()   # dropout off, BN batch statistics
        direct = _direct(child, images, arch).numpy()
        np.testing.assert_allclose(shared, direct, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_fixed_architecture_gradients_are_the_directly_built_networks(child, images, compiled):
    arch = UniformSampler(TINY_SPACE, seed=11).sample_many(1)[0][0].numpy()
    variables = child.trainable_variables

    def gradients(forward):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(forward()))
        return [tf.zeros(v.shape) if g is None else tf.convert_to_tensor(g)
                for g, v in zip(tape.gradient(loss, variables), variables)]
    shared = lambda: gradients(lambda: child((images, arch), training=False))   # noqa: E731
    direct = lambda: gradients(lambda: _direct(child, images, arch))   # noqa: E731
    if compiled:
        shared, direct = tf.function(shared), tf.function(direct)
    for a, b, v in zip(shared(), direct(), variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3, atol=2e-4, err_msg=v.path)


def test_one_trace_for_every_architecture_and_only_used_weights_get_gradients(child, images):
    traces = []

    @tf.function(input_signature=[tf.TensorSpec((6, 8, 8, 3)), tf.TensorSpec((2, 8), tf.int32)])
    def step(x, arch):
        traces.append(1)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(child((x, arch), training=True))
        return tape.gradient(loss, child.trainable_variables)

    sampler = UniformSampler(TINY_SPACE, seed=7)
    archs, _, _ = sampler.sample_many(20)
    assert len({a.tobytes() for a in archs.numpy()}) >= 15
    for arch in archs:
        grads = step(images, arch)
    assert len(traces) == 1
    # The last architecture's unused operand weights get zero gradients.
    arch = archs[-1].numpy()
    operand = child.cells[0].operands[0]
    index, op = int(arch[0][0]), int(arch[0][1])
    names = {id(v): i for i, v in enumerate(child.trainable_variables)}
    for name, weights in operand.conv_weights.items():
        depthwise = weights[0][0]
        g = grads[names[id(depthwise)]]
        g = tf.convert_to_tensor(g).numpy()
        for i in range(operand.num_inputs):
            used = name == operand.operations[op] and i == index
            assert (np.abs(g[i]).sum() > 0) == used, (name, i)


def test_output_mask_is_the_loose_ends(child):
    cell = child.cells[0]
    row = np.array([1, 0, 1, 4, 0, 2, 2, 3], np.int32)   # node 2 <- 1, 1; node 3 <- 0, 2
    assert cell.output_mask(tf.constant(row)).numpy().tolist() == [0, 0, 0, 1]
    assert reference_loose_ends(row) == (3,)
    genotype = arch_to_genotype(np.stack([row, row]), TINY_SPACE)
    assert genotype.normal_concat == (3,)


def test_topology_stats_of_sampled_architectures():
    space = resolve_sampling_space("enas")
    archs, _, _ = UniformSampler(space, seed=3).sample_many(50)
    stats, values = topology_stats(archs.numpy(), space)
    assert len(values["normal_width"]) == 50
    assert 1 <= stats["sampled_normal_width_min"] <= stats["sampled_normal_width_mean"] \
        <= stats["sampled_normal_width_max"] <= 5
    assert stats["sampled_normal_depth_mean"] == pytest.approx(np.mean(values["normal_depth"]))
