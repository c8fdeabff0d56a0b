"""The evaluation cell (DARTS ``Cell``) built from a genotype, and drop path."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfnas import genotypes as _genotypes
from tfnas.ops import FactorizedReduce, Identity, ReLUConvBN, make_operation

__all__ = ["Cell", "DropPath"]

_register = keras.saving.register_keras_serializable(package="tfnas")


@_register
class DropPath(keras.layers.Layer):
    """Zero whole samples of an operation's output with probability ``p`` and
    rescale the kept ones by ``1/(1-p)``; identity outside training.

    ``p`` is a call argument (a tensor or variable), so changing it between
    epochs needs no retracing.  The mask comes from a Keras ``SeedGenerator``
    (a variable, so checkpoints restore the random stream); ``p = 0`` is an
    exact identity (every uniform draw is < 1).  One layer may be called on
    several tensors; each call draws a fresh mask.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="drop_path_seed")

    def call(self, inputs, drop_prob=None, training=False):
        if not training or drop_prob is None:
            return inputs
        if isinstance(drop_prob, (int, float)) and drop_prob == 0:
            return inputs
        keep = 1.0 - tf.cast(tf.convert_to_tensor(drop_prob), inputs.dtype)
        batch = tf.shape(inputs)[0]
        draw = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator, dtype=inputs.dtype)
        scale = tf.math.divide_no_nan(tf.cast(draw < keep, inputs.dtype), keep)
        return inputs * scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@_register
class Cell(keras.layers.Layer):
    """One evaluation cell.  Inputs ``[s0, s1]`` (outputs of the cells two
    back and one back); output the concatenation of the ``concat`` nodes,
    ``len(concat) * channels`` channels.

    Input 0 is preprocessed by FactorizedReduce if the previous cell reduced
    (so both inputs have the same resolution), else by ReLU-1x1 conv-BN;
    input 1 by ReLU-1x1 conv-BN.  In a reduction cell the edges leaving the
    two input nodes have stride 2.  Drop path applies to every edge output
    except identities.  ``kernels``: the :mod:`tfnas.kernels` setting of
    every operation.
    """

    def __init__(self, cell, channels, reduction=False, reduction_prev=False, affine=True,
                 kernels="auto", **kwargs):
        super().__init__(**kwargs)
        if isinstance(cell, dict):
            cell = _genotypes.Cell(cell["edges"], cell["concat"])
        if not isinstance(cell, _genotypes.Cell):
            raise TypeError(f"Cell: expected a tfnas.genotypes.Cell, got {type(cell).__name__}")
        self.cell = cell
        self.channels = int(channels)
        self.reduction, self.reduction_prev, self.affine = bool(reduction), bool(reduction_prev), bool(affine)
        self.kernels = kernels
        sub = dict(dtype=self.dtype_policy)
        ops_kw = dict(sub, kernels=kernels)
        if self.reduction_prev:
            self.preprocess0 = FactorizedReduce(self.channels, affine=self.affine, name="preprocess0", **ops_kw)
        else:
            self.preprocess0 = ReLUConvBN(self.channels, 1, 1, affine=self.affine, name="preprocess0", **ops_kw)
        self.preprocess1 = ReLUConvBN(self.channels, 1, 1, affine=self.affine, name="preprocess1", **ops_kw)
        self.edge_ops = []
        for j, (op, index) in enumerate(cell.edges):
            stride = 2 if self.reduction and index < 2 else 1
            self.edge_ops.append(make_operation(op, self.channels, stride, self.affine,
                                                layer_name=f"edge{j}_{op}_from{index}", **ops_kw))
        self.drop_path = DropPath(name="drop_path", **sub)

    @property
    def multiplier(self) -> int:
        return len(self.cell.concat)

    @property
    def output_channels(self) -> int:
        return self.multiplier * self.channels

    def build(self, input_shape):
        shape0, shape1 = (tuple(s) for s in input_shape)
        self.preprocess0.build(shape0)
        self.preprocess1.build(shape1)
        states = [self.preprocess0.compute_output_shape(shape0), self.preprocess1.compute_output_shape(shape1)]
        if states[0][1:3] != states[1][1:3]:
            raise ValueError(f"Cell: the two inputs have different resolutions after preprocessing: "
                             f"{states[0]} vs {states[1]}")
        for node in range(self.cell.num_nodes):
            out = None
            for j in (2 * node, 2 * node + 1):
                op, index = self.cell.edges[j]
                layer = self.edge_ops[j]
                layer.build(states[index])
                out = layer.compute_output_shape(states[index])
            states.append(out)
        self.built = True

    def call(self, inputs, drop_prob=None, training=False):
        s0, s1 = inputs
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        for node in range(self.cell.num_nodes):
            total = None
            for j in (2 * node, 2 * node + 1):
                _, index = self.cell.edges[j]
                layer = self.edge_ops[j]
                h = layer(states[index], training=training)
                if training and drop_prob is not None and not isinstance(layer, Identity):
                    h = self.drop_path(h, drop_prob=drop_prob, training=training)
                total = h if total is None else total + h
            states.append(total)
        return tf.concat([states[i] for i in self.cell.concat], axis=-1)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape[1]
        if self.reduction:
            h = None if h is None else -(-h // 2)
            w = None if w is None else -(-w // 2)
        return (b, h, w, self.output_channels)

    def get_config(self):
        return {**super().get_config(),
                "cell": {"edges": [list(e) for e in self.cell.edges], "concat": list(self.cell.concat)},
                "channels": self.channels, "reduction": self.reduction,
                "reduction_prev": self.reduction_prev, "affine": self.affine, "kernels": self.kernels}
