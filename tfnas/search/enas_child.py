"""ENAS's shared child network: one set of weights, any sampled architecture.

The child (Pham et al., 2018; facts in ``ENAS.md``) is tfnas's network
skeleton (:class:`tfnas.networks.CellNetwork`: a 3×3 conv stem to 3C
channels, ``layers`` cells with reductions at ``layers//3`` and
``2·layers//3``) whose cells run the architecture given *as a tensor*
(``(2, 4·nodes)`` int32, row 0 the normal cell, row 1 the reduction cell;
per node ``[input_1, op_1, input_2, op_2]``), so one traced step serves
every architecture:

- **weights shared per input index**: every operand slot of a node
  (:class:`SharedOperand`) keeps, for each parametrised operation, its
  depthwise, pointwise and BN weights once per possible input index and
  gathers the sampled input's set;
- **only the sampled operation runs**: ``tf.switch_case`` on the operation
  index; shapes stay static;
- **the output**: the reference concatenates the loose ends (every node,
  the inputs included, that no node consumes; ``concat="all"`` spaces: every
  intermediate node) and maps them back to C channels by ReLU → 1×1 conv →
  BN; here that is one matrix product of all nodes with the node-masked
  weights (the same function, static shapes);
- **input calibration**: input 0 is factorised-reduced when it has twice
  the resolution, else projected (ReLU → 1×1 conv → BN) when its channels
  differ from C; input 1 likewise;
- **reduction cells during search**: both inputs come from the previous
  cell's output (its factorised reduction replaces the cell two back and is
  the next cell's first input) and every operation runs at stride 1;
- **head**: ReLU → global average pooling → dropout → linear (no bias);
- **BN in training mode throughout** (batch statistics; the per-input BN of
  the shared operations has no moving statistics), as the reference's search.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfnas.networks import CellNetwork, dense_classifier
from tfnas.ops import (BatchNorm, FactorizedReduce, ReLUConvBN, check_kernels, depthwise_conv2d, kernel_policy,
                       max_pool_3x3)
from tfnas.operations import operation_spec
from tfnas.plan import cell_plan
from tfnas.search.enas_controller import resolve_sampling_space

__all__ = ["SharedOperand", "EnasCell", "EnasChild"]

_register = keras.saving.register_keras_serializable(package="tfnas")
_EPSILON = 1e-5


def _he_normal_stack(count: int, slice_fan_in: int):
    """Initializer of ``count`` stacked He-normal tensors (the reference's
    initialisation), each with the fan-in of one slice."""
    def initializer(shape, dtype=None):
        std = np.sqrt(2.0 / slice_fan_in)
        return keras.random.truncated_normal(shape, stddev=std / 0.87962566103423978, dtype=dtype)
    return initializer


def _batch_norm(x, gamma, beta):
    """BN with the batch's statistics and the given scale and offset."""
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=_EPSILON, is_training=True)
    return y


def _pointwise(x, kernel, kernels="auto"):
    """A 1×1 convolution by a ``(C_in, C_out)`` kernel: one matrix product
    under the CPU kernel policy, Conv2D (cuDNN on a GPU) otherwise."""
    if not kernel_policy(kernels).pointwise_matmul:
        return tf.nn.conv2d(x, kernel[None, None], 1, "VALID")
    channels = x.shape[-1]
    flat = tf.matmul(tf.reshape(x, (-1, channels)), kernel)
    return tf.reshape(flat, (-1, x.shape[1], x.shape[2], kernel.shape[-1]))


def _conv_stack(spec, x, weights, kernels):
    """(ReLU, depthwise, pointwise, BN with batch statistics) per stack of
    four weights (depthwise, pointwise, gamma, beta)."""
    for i in range(0, len(weights), 4):
        depthwise, pointwise, gamma, beta = weights[i:i + 4]
        x = depthwise_conv2d(tf.nn.relu(x), depthwise, spec.dilation, kernels=kernels)
        x = _batch_norm(_pointwise(x, pointwise, kernels), gamma, beta)
    return x


def _operation(spec, x, index, weights, kernels):
    """Operation ``spec`` on ``x`` with the weights of input ``index`` (a branch)."""
    if spec.family in ("sep_conv", "dil_conv"):
        return lambda: _conv_stack(spec, x, [tf.gather(w, index) for w in weights], kernels)
    if spec.family == "skip":
        return lambda: tf.identity(x)
    if spec.pool == "max":
        # Under the CPU policy the gradient's branch recomputes the pooling:
        # oneDNN's fast MaxPoolGrad needs its forward op beside it (see
        # max_pool_3x3).  tf.identity: the branch's own copy of x (a custom
        # gradient may only refer to tensors of the branch's graph).
        recomputes = kernel_policy(kernels).max_pool_gradient_recomputes
        return lambda: max_pool_3x3(tf.identity(x), 1, gradient_recomputes=recomputes)
    return lambda: tf.nn.avg_pool2d(x, 3, 1, "SAME")   # SAME at stride 1 excludes the padding


def _run_operand(specs, kernels, x, index, op, *weights):
    branches, start = [], 0
    for spec in specs:
        count = 4 * (2 if spec.family == "sep_conv" else 1) if spec.family in ("sep_conv", "dil_conv") else 0
        branches.append(_operation(spec, x, index, weights[start:start + count], kernels))
        start += count
    return tf.switch_case(op, branches)


_OPERAND_FUNCTIONS = {}


def _operand_function(operations: tuple, kernels: str):
    """One ``tf.function`` per operation list and kernel setting, the weights
    passed in: every operand of every cell calls it, so its graph and
    gradient are traced once per input shape instead of once per operand."""
    key = (operations, kernels)
    if key not in _OPERAND_FUNCTIONS:
        specs = [operation_spec(name) for name in operations]
        _OPERAND_FUNCTIONS[key] = tf.function(
            lambda x, index, op, *weights: _run_operand(specs, kernels, x, index, op, *weights),
            autograph=False)
    return _OPERAND_FUNCTIONS[key]


@_register
class SharedOperand(keras.layers.Layer):
    """One operand of a node: every operation of the space on the node's
    chosen input, with weights per possible input index (``num_inputs``).

    Separable convolutions are (ReLU, depthwise, pointwise, BN) twice,
    dilated ones once with dilation 2; pools are 3×3 at stride 1 (the
    average excluding the padding); ``skip_connect`` is the identity."""

    def __init__(self, channels, num_inputs, operations, kernels="auto", **kwargs):
        super().__init__(**kwargs)
        self.channels, self.num_inputs = int(channels), int(num_inputs)
        self.operations = tuple(operations)
        self.kernels = check_kernels(kernels)
        self.specs = [operation_spec(name) for name in self.operations]
        unsupported = [s.name for s in self.specs if s.family not in ("sep_conv", "dil_conv", "pool", "skip")]
        if unsupported:
            raise ValueError(f"the ENAS child cannot share weights of {unsupported}")

    def build(self, input_shape):
        c, n = self.channels, self.num_inputs
        self.conv_weights = {}
        for spec in self.specs:
            if spec.family not in ("sep_conv", "dil_conv"):
                continue
            k = spec.kernel_size
            stacks = 2 if spec.family == "sep_conv" else 1
            weights = []
            for s in range(stacks):
                prefix = f"{spec.name}_{s + 1}"
                weights.append((
                    self.add_weight(shape=(n, k, k, c, 1), name=f"{prefix}_depthwise",
                                    initializer=_he_normal_stack(n, k * k)),
                    self.add_weight(shape=(n, c, c), name=f"{prefix}_pointwise",
                                    initializer=_he_normal_stack(n, c)),
                    self.add_weight(shape=(n, c), name=f"{prefix}_gamma", initializer="ones"),
                    self.add_weight(shape=(n, c), name=f"{prefix}_beta", initializer="zeros")))
            self.conv_weights[spec.name] = weights

    def call(self, x, input_index, op_index):
        weights = [tf.convert_to_tensor(w) for spec in self.specs for stack in self.conv_weights.get(spec.name, ())
                   for w in stack]
        if tf.executing_eagerly():
            # The shared function is for graphs: a custom gradient in a switch
            # in a function first traced under an eager tape gave zero
            # gradients to later graph callers (tested).
            specs = [operation_spec(name) for name in self.operations]
            return _run_operand(specs, self.kernels, x, input_index, op_index, *weights)
        return _operand_function(self.operations, self.kernels)(x, input_index, op_index, *weights)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "num_inputs": self.num_inputs,
                "operations": list(self.operations), "kernels": self.kernels}


class _NodeList:
    """A cell's nodes as a tensor list, read at a tensor index.  The list
    holds references: no stacked copy forward (a gather from the stacked
    nodes), and backward a read's gradient reaches only the node read, where
    a gather or a switch gives every other node a zero-filled gradient to
    sum."""

    def __init__(self, nodes, capacity):
        self.dtype = nodes[0].dtype
        self.shape = [-1 if d is None else d for d in nodes[0].shape]
        self.handle = tf.raw_ops.EmptyTensorList(element_shape=self.shape, max_num_elements=capacity,
                                                 element_dtype=self.dtype)
        for node in nodes:
            self.append(node)

    def append(self, node):
        self.handle = tf.raw_ops.TensorListPushBack(input_handle=self.handle, tensor=node)

    def __getitem__(self, index):
        return tf.raw_ops.TensorListGetItem(input_handle=self.handle, index=index, element_shape=self.shape,
                                            element_dtype=self.dtype)


def _calibration(mode, channels, name, dtype, kernels):
    if mode == "reduce":
        return FactorizedReduce(channels, kernels=kernels, dtype=dtype, name=name)
    if mode == "project":
        return ReLUConvBN(channels, 1, 1, kernels=kernels, dtype=dtype, name=name)
    return None


@_register
class EnasCell(keras.layers.Layer):
    """One cell of the child: inputs ``(s0, s1)``, the cell's row of the
    architecture; output ``C`` channels (see the module docstring).  A
    reduction cell returns ``(factorised reduction of s1, output)``: the
    first is the next cell's first input."""

    def __init__(self, space, channels, reduction=False, input0="identity", input1="identity",
                 kernels="auto", **kwargs):
        super().__init__(**kwargs)
        self.kernels = check_kernels(kernels)
        self.space = resolve_sampling_space(space)
        self.channels, self.reduction = int(channels), bool(reduction)
        self.input0, self.input1 = input0, input1
        dt = self.dtype_policy
        self.pre_reduction = FactorizedReduce(self.channels, kernels=kernels, dtype=dt, name="pre_reduction") \
            if self.reduction else None
        self.calibrate0 = _calibration(input0, self.channels, "calibrate0", dt, kernels)
        self.calibrate1 = _calibration(input1, self.channels, "calibrate1", dt, kernels)
        nodes = self.space.num_nodes
        self.operands = [SharedOperand(self.channels, 2 + i, self.space.operations, kernels=kernels,
                                       dtype=dt, name=f"node{2 + i}_{b}")
                         for i in range(nodes) for b in ("x", "y")]
        self.out_bn = BatchNorm(dtype=dt, name="out_bn")
        self._all_concat = self.space.concat == "all"

    def build(self, s0_shape, s1_shape):
        c = self.channels
        if self.reduction:
            self.pre_reduction.build(s1_shape)
            s0_shape, s1_shape = s1_shape, self.pre_reduction.compute_output_shape(s1_shape)
        for layer, shape in ((self.calibrate0, s0_shape), (self.calibrate1, s1_shape)):
            if layer is not None:
                layer.build(shape)
        shape = self.compute_output_shape(s0_shape, s1_shape)
        for operand in self.operands:
            operand.build(shape)
        self.out_kernel = self.add_weight(shape=(2 + self.space.num_nodes, c, c), name="out_kernel",
                                          initializer=_he_normal_stack(2 + self.space.num_nodes, c))
        self.out_bn.build(shape)

    def compute_output_shape(self, s0_shape, s1_shape):
        b, h, w, _ = s1_shape
        if self.reduction:
            h, w = (None if n is None else n // 2 for n in (h, w))
        return (b, h, w, self.channels)

    def _inputs(self, s0, s1):
        pre = None
        if self.reduction:
            pre = self.pre_reduction(s1, training=True)
            s0, s1 = s1, pre
        x0 = s0 if self.calibrate0 is None else self.calibrate0(s0, training=True)
        x1 = s1 if self.calibrate1 is None else self.calibrate1(s1, training=True)
        return pre, [x0, x1]

    def output_mask(self, row):
        """1 for the nodes the output reads (the loose ends, or every
        intermediate node), 0 for the others; from the cell's row."""
        count = 2 + self.space.num_nodes
        if self._all_concat:
            return tf.constant([0.0, 0.0] + [1.0] * self.space.num_nodes)
        inputs = tf.stack([row[4 * i] for i in range(self.space.num_nodes)]
                          + [row[4 * i + 2] for i in range(self.space.num_nodes)])
        used = tf.reduce_max(tf.one_hot(inputs, count), axis=0)
        return 1.0 - used

    def call(self, s0, s1, row, training=True):
        pre, nodes = self._inputs(s0, s1)
        candidates = _NodeList(nodes, 2 + self.space.num_nodes)
        for i in range(self.space.num_nodes):
            operands = []
            for b in range(2):
                index, op = row[4 * i + 2 * b], row[4 * i + 2 * b + 1]
                operands.append(self.operands[2 * i + b](candidates[index], index, op))
            nodes.append(operands[0] + operands[1])
            candidates.append(nodes[-1])
        mask = tf.cast(self.output_mask(row), self.out_kernel.dtype)
        kernel = tf.reshape(self.out_kernel * mask[:, None, None], (-1, self.channels))
        out = self.out_bn(_pointwise(tf.nn.relu(tf.concat(nodes, axis=-1)), kernel, self.kernels),
                          training=True)
        return (pre, out) if self.reduction else out

    def get_config(self):
        return {**super().get_config(), "space": self.space.to_dict(), "channels": self.channels,
                "reduction": self.reduction, "input0": self.input0, "input1": self.input1,
                "kernels": self.kernels}


def _calibration_modes(slot, stem_channels):
    """How each input of the cell in ``slot`` is calibrated to its C
    channels (a reduction cell's inputs are both derived from ``s1``)."""
    c = slot.channels
    if slot.reduction:
        return "reduce", "identity"
    if slot.reduction_prev:   # s0 is the reduction cell's factorised reduction: C channels
        return "identity", "identity"
    c0 = stem_channels if slot.index < 2 else c
    c1 = stem_channels if slot.index == 0 else c
    return ("project" if c0 != c else "identity"), ("project" if c1 != c else "identity")


@_register
class EnasChild(CellNetwork):
    """The shared child; ``model((images, arch), training=...)`` returns logits."""

    def __init__(self, space="enas", init_channels=20, layers=8, num_classes=10, dropout=0.1, **kwargs):
        self.space = resolve_sampling_space(space)
        self.dropout_rate = float(dropout)
        super().__init__(init_channels, layers, num_classes, cell_plan(init_channels, layers, lambda r: 1),
                         **kwargs)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy, name="dropout")

    def make_cell(self, slot):
        input0, input1 = _calibration_modes(slot, self.plan.stem_channels)
        kind = "reduce" if slot.reduction else "normal"
        return EnasCell(self.space, slot.channels, slot.reduction, input0, input1, kernels=self.kernels,
                        dtype=self.dtype_policy, name=f"cell{slot.index}_{kind}")

    def make_classifier(self):
        return dense_classifier(self.num_classes, self.plan.final_channels, self.dtype_policy,
                                "classifier", use_bias=False)

    def build_cell(self, cell, s0_shape, s1_shape):
        cell.build(s0_shape, s1_shape)
        return cell.compute_output_shape(s0_shape, s1_shape)

    def advance_shapes(self, cell, s0_shape, s1_shape):
        out = self.build_cell(cell, s0_shape, s1_shape)
        return (out if cell.reduction else s1_shape), out

    def advance(self, cell, s0, s1, training, arch):
        if cell.reduction:
            return cell(s0, s1, arch[1])
        return s1, cell(s0, s1, arch[0])

    def stem(self, x, training):
        return super().stem(x, True)   # BN in training mode throughout the search

    def classify(self, features, training):
        pooled = tf.reduce_mean(tf.nn.relu(features), axis=[1, 2])
        return self.classifier(self.dropout(pooled, training=training))

    def call(self, inputs, training=False):
        images, arch = inputs
        features, _ = self.features(images, training, context=tf.convert_to_tensor(arch, tf.int32))
        return self.classify(features, training)

    @property
    def arch_shape(self) -> tuple:
        return (2, 4 * self.space.num_nodes)

    def get_config(self):
        return {**super().get_config(), "space": self.space.to_dict(), "init_channels": self.init_channels,
                "layers": self.num_layers, "num_classes": self.num_classes, "dropout": self.dropout_rate}
