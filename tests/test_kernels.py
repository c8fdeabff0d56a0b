"""The kernel policy: its choices per device, the standard and the CPU-tuned
kernels computing the same outputs and gradients, the setting in configs."""

import collections

import numpy as np
import pytest

import keras
import tensorflow as tf

from tfnas import ops
from tfnas.kernels import KERNEL_CHOICES, KERNEL_POLICIES, check_kernels, resolve_kernels
from tfnas.networks import NetworkCIFAR

TUNED = ("pointwise_matmul", "depthwise_filter_gradient", "max_pool_gradient_recomputes",
         "subsample_space_to_depth")


def test_auto_takes_the_tuned_kernels_on_a_cpu_and_the_standard_ones_on_a_gpu():
    cpu, gpu = resolve_kernels("auto", "CPU"), resolve_kernels("auto", "GPU")
    assert cpu is KERNEL_POLICIES["cpu"] and gpu is KERNEL_POLICIES["standard"]
    assert all(getattr(cpu, name) for name in TUNED)
    assert not any(getattr(gpu, name) for name in TUNED)
    # an explicit setting holds on any device
    assert resolve_kernels("cpu", "GPU") is cpu and resolve_kernels("standard", "CPU") is gpu
    assert ops.kernel_policy("auto").name == ("standard" if ops.device_type() == "GPU" else "cpu")
    assert KERNEL_CHOICES == ("auto", "cpu", "standard")
    with pytest.raises(ValueError, match="kernels must be one of auto, cpu, standard"):
        check_kernels("cudnn")
    with pytest.raises(ValueError, match="kernels must be one of"):
        ops.PointwiseConv2D(4, kernels="fast")


def _graph_ops(fn, *args) -> set:
    return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


def _forward_and_gradient(layer):
    """The output and the gradients of a fixed random projection of it (the
    gradient of the plain sum through a BN is zero up to rounding)."""
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            projection = tf.random.stateless_normal(tf.shape(y), seed=(1, 2))
            loss = tf.reduce_sum(y * projection)
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]
    return run


def test_a_simulated_gpu_traces_the_standard_kernels(monkeypatch):
    x = tf.TensorSpec((2, 8, 8, 4), tf.float32)
    pointwise, depthwise = ops.PointwiseConv2D(4), ops.SepConv(4, 5, 1)
    reduce = ops.FactorizedReduce(4)
    for layer in (pointwise, depthwise, reduce):
        layer.build(x.shape)
    on_cpu = [_graph_ops(_forward_and_gradient(layer), x) for layer in (pointwise, depthwise, reduce)]
    monkeypatch.setattr(ops, "device_type", lambda: "GPU")
    on_gpu = [_graph_ops(_forward_and_gradient(layer), x) for layer in (pointwise, depthwise, reduce)]
    assert "MatMul" in on_cpu[0] and "Conv2D" not in on_cpu[0]
    assert "Conv2D" in on_gpu[0] and "MatMul" not in on_gpu[0]
    assert "DepthwiseConv2dNativeBackpropFilter" not in on_cpu[1]
    assert "DepthwiseConv2dNativeBackpropFilter" in on_gpu[1]
    assert "SpaceToDepth" in on_cpu[2] and "SpaceToDepth" not in on_gpu[2]


def _same_weights_pair(make, shape):
    """The layer ``make(kernels)`` under the cpu and the standard policy, same weights."""
    tuned, standard = make("cpu"), make("standard")
    tuned.build(shape)
    standard.build(shape)
    standard.set_weights(tuned.get_weights())
    return tuned, standard


@pytest.mark.parametrize("name,stride", [("sep_conv_5x5", 1), ("dil_conv_5x5", 1), ("dil_conv_3x3", 2),
                                         ("skip_connect", 2), ("sep_conv_3x3", 2)])
def test_an_operation_computes_the_same_under_both_policies(name, stride):
    x = tf.constant(np.random.RandomState(0).randn(2, 8, 8, 6), tf.float32)
    tuned, standard = _same_weights_pair(
        lambda k: ops.make_operation(name, 6, stride, kernels=k), x.shape)
    for a, b in zip(_forward_and_gradient(tuned)(x), _forward_and_gradient(standard)(x)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_a_max_pool_whose_gradient_recomputes_has_the_same_gradient_under_both_policies():
    x = tf.constant(np.random.RandomState(1).randn(2, 8, 8, 3), tf.float32)
    grads = []
    for kernels in ("cpu", "standard"):
        pool = ops.Pool("max", 2, kernels=kernels)
        pool.gradient_recomputes = True
        grads.append(_forward_and_gradient(pool)(x)[1].numpy())
    np.testing.assert_array_equal(grads[0], grads[1])


def test_a_network_computes_the_same_outputs_and_gradients_under_both_policies():
    x = tf.constant(np.random.RandomState(2).randn(2, 16, 16, 3), tf.float32)
    y = tf.constant([1, 3])
    results = []
    keras.utils.set_random_seed(0)
    tuned, standard = _same_weights_pair(
        lambda k: NetworkCIFAR("DARTS_V2", init_channels=4, layers=3, num_classes=5, kernels=k),
        (None, 16, 16, 3))
    for model in (tuned, standard):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        results.append((logits, tape.gradient(loss, model.trainable_variables)))
    np.testing.assert_allclose(results[0][0].numpy(), results[1][0].numpy(), rtol=1e-4, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-5)


def test_the_setting_is_in_the_configs():
    model = NetworkCIFAR("DARTS_V2", init_channels=4, layers=3, num_classes=5, kernels="standard")
    assert model.get_config()["kernels"] == "standard"
    cell = model.cells[0]
    assert cell.get_config()["kernels"] == "standard"
    assert {op.kernels for op in cell.edge_ops if hasattr(op, "kernels")} == {"standard"}
    clone = NetworkCIFAR.from_config(model.get_config())
    assert clone.cells[0].preprocess1.conv.kernels == "standard"
    assert NetworkCIFAR("DARTS_V2", init_channels=4, layers=3).kernels == "auto"


@pytest.mark.slow
def test_a_low_memory_supernet_computes_the_same_under_both_policies():
    # the loops' max pools recompute their gradient only under the cpu policy
    from tfnas.search.supernet import SearchNetwork
    from tfnas.space import ENAS_SPACE, CellSpace
    space = CellSpace.from_dict(dict(ENAS_SPACE.to_dict(), num_nodes=1))
    x = tf.constant(np.random.RandomState(3).randn(2, 8, 8, 3), tf.float32)
    y = tf.constant([0, 4])
    tuned, standard = _same_weights_pair(
        lambda k: SearchNetwork(C=4, layers=3, num_classes=5, space=space, alpha_seed=1,
                                low_memory=True, kernels=k), (None, 8, 8, 3))
    results = []
    for model in (tuned, standard):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                y, model(x, training=True)))
        results.append([loss, *tape.gradient(loss, model.trainable_variables)])
    for a, b in zip(*results):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-5)


def test_the_enas_child_follows_the_policy_and_computes_the_same_under_both():
    # Its shared operands have their own 1×1 convolution and max pool: they
    # too take the standard kernels (cuDNN on a GPU) under "standard".
    from tfnas.search.enas_child import EnasChild
    from tfnas.search.enas_controller import ENAS_MICRO_SPACE
    from tfnas.space import CellSpace
    space = CellSpace(ENAS_MICRO_SPACE.operations, 2, "loose_ends")
    x = tf.constant(np.random.RandomState(4).randn(2, 8, 8, 3), tf.float32)
    y = tf.constant([0, 4])
    # node 2: sep_conv_5x5 of input 1 + max pool of input 0; node 3: sep_conv_3x3 of node 2 + skip of input 1
    arch = tf.constant([[1, 1, 0, 3, 2, 0, 1, 4]] * 2, tf.int32)
    tuned, standard = _same_weights_pair(
        lambda k: EnasChild(space, init_channels=4, layers=3, num_classes=5, dropout=0.0, kernels=k),
        (None, 8, 8, 3))
    assert standard.cells[0].operands[0].get_config()["kernels"] == "standard"

    def run(model):
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    y, model((x, arch), training=True)))
            return [loss, *tape.gradient(loss, model.trainable_variables)]
        return step

    def op_counts(model):
        graph = tf.function(run(model)).get_concrete_function(tf.TensorSpec(x.shape, x.dtype)).graph
        definition = graph.as_graph_def()   # the operands' functions are in its library
        nodes = [*definition.node, *(n for f in definition.library.function for n in f.node_def)]
        return collections.Counter(node.op for node in nodes)

    cpu_ops, standard_ops = op_counts(tuned), op_counts(standard)
    assert standard_ops.get("Conv2D", 0) > cpu_ops.get("Conv2D", 0)
    assert standard_ops.get("MatMul", 0) < cpu_ops.get("MatMul", 0)
    results = [run(model)(x) for model in (tuned, standard)]
    assert sum(g is not None for g in results[0]) > 20
    for a, b in zip(*results):
        assert (a is None) == (b is None)   # weights of operations the architecture does not use
        if a is not None:   # gathered weights have IndexedSlices gradients
            np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(),
                                       rtol=1e-3, atol=1e-5)
