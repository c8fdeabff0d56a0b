"""The DARTS search network ("supernet"): every edge a softmax-weighted mix
of all operations of a :class:`~tfnas.space.CellSpace`.

Follows the reference ``model_search.py``: a 3×3 conv stem with an affine BN
(3C channels), ``layers`` search cells with reductions at ``layers//3`` and
``2*layers//3`` (doubling C), global average pooling and a linear classifier.
Every BN inside the cells is non-affine; pools are followed by a non-affine
BN.  The architecture parameters -- ``alphas_normal`` and ``alphas_reduce``,
shape ``(num_edges, num_operations)``, initialised ``1e-3·N(0, 1)`` -- are
held apart from the weights (``weight_variables`` / ``alpha_variables``) so
each gets its own optimizer.

A search cell concatenates all its intermediate nodes whatever the space's
concat rule: which nodes are loose ends is only known after derivation
(:mod:`tfnas.search.derive` applies the rule).

``low_memory=True`` computes the same function in less memory (measured in
``docs/benchmarks.md``): every cell runs its edges in ``tf.while_loop``
loops over an edge index (one traced mixed operation per loop instead of one
per edge: a smaller graph), and in training mode the loops' activations are
recomputed in the backward pass (``tf.recompute_grad``) instead of kept.
It trades speed for memory, takes first derivatives only (not the exact
hypergradient) and keeps the variables and checkpoints of the unrolled form.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfnas.networks import _dense
from tfnas.ops import BatchNorm, FactorizedReduce, ReLUConvBN, _conv_init, make_operation
from tfnas.space import DARTS_SPACE, CellSpace

_register = keras.saving.register_keras_serializable(package="tfnas")

STEM_MULTIPLIER = 3


def _space(space) -> CellSpace:
    if isinstance(space, CellSpace):
        return space
    if isinstance(space, dict):
        return CellSpace.from_dict(space)
    raise TypeError(f"space must be a CellSpace or its dict, not {type(space).__name__}")


@_register
class PoolBN(keras.layers.Layer):
    """A pooling operation followed by a non-affine BN (search network only)."""

    def __init__(self, pool, bn_fused=None, **kwargs):
        super().__init__(**kwargs)
        self.pool = pool
        self.bn = BatchNorm(affine=False, fused=bn_fused, dtype=self.dtype_policy, name="bn")

    def build(self, input_shape):
        self.bn.build(self.pool.compute_output_shape(input_shape))

    def compute_output_shape(self, input_shape):
        return self.pool.compute_output_shape(input_shape)

    def call(self, x, training=False):
        return self.bn(self.pool(x), training=training)


@_register
class MixedOp(keras.layers.Layer):
    """``Σ_k w_k · op_k(x)`` over the space's operations (``w`` = a softmax row).

    ``none`` contributes exactly zero, so it is not computed (its weight still
    takes part in the softmax)."""

    def __init__(self, channels, stride, operations, bn_fused=None, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.stride = int(channels), int(stride)
        self.operations = tuple(operations)
        self.bn_fused = bn_fused
        self.ops = []
        self.op_indices = []
        for k, name in enumerate(self.operations):
            if name == "none":
                continue
            op = make_operation(name, self.channels, self.stride, affine=False,
                                layer_name=f"{name}", dtype=self.dtype_policy)
            if "pool" in name:
                op = PoolBN(op, bn_fused=bn_fused, dtype=self.dtype_policy, name=f"{name}_bn")
            self.ops.append(op)
            self.op_indices.append(k)

    def build(self, x_shape, weights_shape=None):
        for op in self.ops:
            op.build(x_shape)

    def compute_output_shape(self, x_shape, weights_shape=None):
        b, h, w, c = x_shape
        s = self.stride
        return (b, None if h is None else -(-h // s), None if w is None else -(-w // s),
                self.channels)

    def call(self, x, weights, training=False):
        # One Unpack op instead of a StridedSlice (+3 constants) per operation:
        # the supernet has ~900 mixed operations, and graph size is trace time.
        weights = tf.unstack(weights, num=len(self.operations))
        outputs = [weights[k] * op(x, training=training)
                   for k, op in zip(self.op_indices, self.ops)]
        if not outputs:  # a space of only "none"
            return tf.zeros_like(x[:, ::self.stride, ::self.stride, :])
        return tf.add_n(outputs)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "stride": self.stride,
                "operations": list(self.operations), "bn_fused": self.bn_fused}


@_register
class SearchCell(keras.layers.Layer):
    """A search cell: every intermediate node sums a :class:`MixedOp` from each
    earlier node; the output concatenates all intermediate nodes."""

    def __init__(self, channels, reduction, reduction_prev, space=DARTS_SPACE, bn_fused=None,
                 low_memory=False, **kwargs):
        super().__init__(**kwargs)
        self.space = _space(space)
        self.channels = int(channels)
        self.reduction, self.reduction_prev = bool(reduction), bool(reduction_prev)
        self.bn_fused = bn_fused
        self.low_memory = bool(low_memory)
        dt = self.dtype_policy
        if self.reduction_prev:
            self.preprocess0 = FactorizedReduce(self.channels, affine=False, dtype=dt,
                                                name="preprocess0")
        else:
            self.preprocess0 = ReLUConvBN(self.channels, 1, 1, affine=False, dtype=dt,
                                          name="preprocess0")
        self.preprocess1 = ReLUConvBN(self.channels, 1, 1, affine=False, dtype=dt,
                                      name="preprocess1")
        self.edges = []
        for node, j in self.space.edge_inputs():
            stride = 2 if self.reduction and j < 2 else 1
            self.edges.append(MixedOp(self.channels, stride, self.space.operations,
                                      bn_fused=bn_fused, dtype=dt, name=f"edge_{node}_{j}"))

    def build(self, s0_shape, s1_shape, weights_shape=None):
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s1_shape)
        shapes = [self.preprocess0.compute_output_shape(s0_shape),
                  self.preprocess1.compute_output_shape(s1_shape)]
        offset = 0
        for _ in range(self.space.num_nodes):
            for j, shape in enumerate(shapes):
                self.edges[offset + j].build(shape)
            node_shape = self.edges[offset].compute_output_shape(shapes[0])
            offset += len(shapes)
            shapes.append(node_shape)

    def compute_output_shape(self, s0_shape, s1_shape, weights_shape=None):
        b, h, w, _ = self.preprocess1.compute_output_shape(s1_shape)
        if self.reduction:
            h, w = (None if n is None else -(-n // 2) for n in (h, w))
        return (b, h, w, self.space.num_nodes * self.channels)

    def call(self, s0, s1, weights, training=False):
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        if self.low_memory:
            return self._call_in_loops(states, weights, training)
        weights = tf.unstack(weights, num=len(self.edges))
        offset = 0
        for _ in range(self.space.num_nodes):
            node = tf.add_n([self.edges[offset + j](h, weights[offset + j], training=training)
                             for j, h in enumerate(states)])
            offset += len(states)
            states.append(node)
        return tf.concat(states[2:], axis=-1)

    def _call_in_loops(self, states, weights, training):
        """The same cell as the unrolled ``call``, its edges run one after the
        other by ``tf.while_loop``: one loop over a normal cell's edges; in a
        reduction cell, one over the stride-2 edges from the cell's inputs,
        then one over the rest (every node is complete before an edge reads
        it, as in the reference order)."""
        edges = self.space.edge_inputs()
        if not self.reduction:
            nodes = tf.stack(states + [tf.zeros_like(states[1])] * self.space.num_nodes)
            nodes = self._edge_loop(range(len(edges)), [j for _, j in edges],
                                    [node for node, _ in edges], nodes, weights, training)
            return tf.concat(tf.unstack(nodes[2:], num=self.space.num_nodes), axis=-1)
        first = [e for e, (_, j) in enumerate(edges) if j < 2]
        rest = [e for e, (_, j) in enumerate(edges) if j >= 2]
        nodes = tf.stack([tf.zeros_like(states[1][:, ::2, ::2, :])] * self.space.num_nodes)
        nodes = self._edge_loop(first, [edges[e][1] for e in first],
                                [edges[e][0] - 2 for e in first], nodes, weights, training,
                                inputs=tf.stack(states))
        if rest:
            nodes = self._edge_loop(rest, [edges[e][1] - 2 for e in rest],
                                    [edges[e][0] - 2 for e in rest], nodes, weights, training)
        return tf.concat(tf.unstack(nodes, num=self.space.num_nodes), axis=-1)

    def _edge_loop(self, edge_ids, sources, targets, nodes, weights, training, inputs=None):
        """For each edge ``edge_ids[k]`` in order, add its output on
        ``inputs[sources[k]]`` (or ``nodes[sources[k]]``) to
        ``nodes[targets[k]]``.  The edges are alike (same stride and shapes):
        each iteration evaluates the first one's layers with edge ``e``'s
        variable values (every edge's values stacked, then gathered), so the
        graph holds one mixed operation, not one per edge.  The BN statistics
        an iteration writes are scattered back to its edge."""
        edge_ids = list(edge_ids)
        per_edge = [self.edges[e].variables for e in edge_ids]
        slots = per_edge[0]
        stacked = [tf.stack([tf.convert_to_tensor(variables[i]) for variables in per_edge])
                   for i in range(len(slots))]
        state_slots = [i for i, v in enumerate(slots) if not v.trainable]
        template = self.edges[edge_ids[0]]
        sources, targets = tf.constant(sources), tf.constant(targets)
        num_nodes = nodes.shape[0]
        reads_nodes = inputs is None

        def run_edges(nodes, weights, *args):
            # Explicit inputs only: tf.recompute_grad re-runs this when the
            # gradient is taken, outside the caller's StatelessScope.
            inputs, stacked = (None, args) if reads_nodes else (args[0], args[1:])

            def body(k, nodes, *statistics):
                values = [tf.gather(value, k) for value in stacked]
                x = tf.gather(nodes if reads_nodes else inputs, sources[k])
                with keras.StatelessScope(state_mapping=list(zip(slots, values))) as scope:
                    y = template(x, tf.gather(weights, k), training=training)
                # Add y to its target node (a one-hot mask: no scatter in the backward pass).
                mask = tf.reshape(tf.one_hot(targets[k], num_nodes, dtype=y.dtype),
                                  (-1, 1, 1, 1, 1))
                statistics = [tf.tensor_scatter_nd_update(s, [[k]],
                                                          [scope.get_current_value(slots[i])])
                              for s, i in zip(statistics, state_slots)]
                return (k + 1, nodes + mask * y[None], *statistics)

            loop_vars = (tf.constant(0), nodes, *[stacked[i] for i in state_slots])
            _, nodes, *statistics = tf.while_loop(lambda k, *_: k < len(edge_ids), body,
                                                  loop_vars, parallel_iterations=2)
            return (nodes, *statistics)

        args = (nodes, tf.gather(weights, edge_ids), *([] if reads_nodes else [inputs]), *stacked)
        if not training:
            return run_edges(*args)[0]
        # Keep no activations: recompute them in the backward pass.
        nodes, *statistics = tf.recompute_grad(run_edges)(*args)
        for i, values in zip(state_slots, statistics):
            for variables, value in zip(per_edge, tf.unstack(values, num=len(per_edge))):
                variables[i].assign(value)
        return nodes

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "reduction": self.reduction,
                "reduction_prev": self.reduction_prev, "space": self.space.to_dict(),
                "bn_fused": self.bn_fused, "low_memory": self.low_memory}


@_register
class SearchNetwork(keras.Model):
    """DARTS search network; ``model(x, training=...)`` returns logits.

    ``bn_fused`` goes to every BN inside the cells (see
    :class:`tfnas.ops.BatchNorm`): ``None`` picks the fused kernel in float32
    (fast, first derivatives only), ``False`` the differentiable path that
    second-order search with ``hessian="exact"`` needs.
    """

    def __init__(self, C=16, layers=8, num_classes=10, space=DARTS_SPACE, bn_fused=None,
                 alpha_seed=None, low_memory=False, **kwargs):
        super().__init__(**kwargs)
        self.space = _space(space)
        self.C, self.num_layers, self.num_classes = int(C), int(layers), int(num_classes)
        self.bn_fused = bn_fused
        self.low_memory = bool(low_memory)
        self.alpha_seed = alpha_seed
        if self.num_layers < 1 or self.C < 1:
            raise ValueError("search network: C and layers must be positive")
        dt = self.dtype_policy
        c_curr = STEM_MULTIPLIER * self.C
        self.stem_conv = keras.layers.Conv2D(c_curr, 3, padding="same", use_bias=False,
                                             kernel_initializer=_conv_init(), dtype=dt,
                                             name="stem_conv")
        self.stem_bn = BatchNorm(affine=True, fused=bn_fused, dtype=dt, name="stem_bn")
        c_prev = c_curr
        c_curr = self.C
        reduction_prev = False
        self.cells = []
        for i in range(self.num_layers):
            reduction = i in (self.num_layers // 3, 2 * self.num_layers // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(c_curr, reduction, reduction_prev, self.space,
                                         bn_fused=bn_fused, low_memory=self.low_memory,
                                         dtype=dt, name=f"cell_{i}"))
            reduction_prev = reduction
            c_prev = self.space.num_nodes * c_curr
        self.classifier = _dense(self.num_classes, c_prev, dt, "classifier")
        shape = (self.space.num_edges, len(self.space.operations))
        init = keras.initializers.RandomNormal(stddev=1e-3, seed=alpha_seed)
        self.alphas_normal = self.add_weight(shape=shape, initializer=init, name="alphas_normal")
        self.alphas_reduce = self.add_weight(shape=shape, initializer=init, name="alphas_reduce")

    @property
    def alpha_variables(self) -> list:
        return [self.alphas_normal, self.alphas_reduce]

    @property
    def weight_variables(self) -> list:
        alpha_ids = {id(v) for v in self.alpha_variables}
        return [v for v in self.trainable_variables if id(v) not in alpha_ids]

    def build(self, input_shape):
        self.stem_conv.build(input_shape)
        shape = self.stem_conv.compute_output_shape(input_shape)
        self.stem_bn.build(shape)
        s0 = s1 = shape
        for cell in self.cells:
            cell.build(s0, s1)
            s0, s1 = s1, cell.compute_output_shape(s0, s1)
        self.classifier.build((input_shape[0], s1[-1]))

    def call(self, x, training=False):
        s = self.stem_bn(self.stem_conv(x), training=training)
        s0 = s1 = s
        w_normal = tf.nn.softmax(self.alphas_normal, axis=-1)
        w_reduce = tf.nn.softmax(self.alphas_reduce, axis=-1)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal,
                              training=training)
        return self.classifier(tf.reduce_mean(s1, axis=[1, 2]))

    def build_for(self, image_shape=(32, 32, 3)):
        """Create every variable from shapes (no forward pass)."""
        self.build((None, *image_shape))
        return self

    def softmax_alphas(self) -> dict:
        """``{"normal": array, "reduce": array}`` of softmax(alpha) per edge."""
        return {"normal": tf.nn.softmax(self.alphas_normal, axis=-1).numpy(),
                "reduce": tf.nn.softmax(self.alphas_reduce, axis=-1).numpy()}

    def count_weights(self) -> int:
        return int(sum(int(tf.size(v)) for v in self.weight_variables))

    def count_alphas(self) -> int:
        return int(sum(int(tf.size(v)) for v in self.alpha_variables))

    def get_config(self):
        return {**super().get_config(), "C": self.C, "layers": self.num_layers,
                "num_classes": self.num_classes, "space": self.space.to_dict(),
                "bn_fused": self.bn_fused, "alpha_seed": self.alpha_seed,
                "low_memory": self.low_memory}
