"""The DARTS search network ("supernet"): every edge a softmax-weighted mix
of all operations of a :class:`~tfnas.space.CellSpace`.

Follows the reference ``model_search.py`` on tfnas's one network skeleton
(:class:`tfnas.networks.CellNetwork`): a 3×3 conv stem with an affine BN
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
per edge), the variables of alike edges are stacked (:class:`EdgeStack`: one
variable per slot, not one per edge and slot -- a much smaller graph), and
in training mode the loops' activations are recomputed in the backward pass
(``tf.recompute_grad``) instead of kept.  It trades speed for memory and
takes first derivatives only (not the exact hypergradient).  The weights
and their initial distribution are the unrolled form's, stacked, so the
parameter count is the same; checkpoints hold the stacked layout and resume
only in the low-memory form.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfnas.networks import CellNetwork
from tfnas.ops import BatchNorm, FactorizedReduce, Pool, ReLUConvBN, layers_of_type, make_operation
from tfnas.plan import cell_plan
from tfnas.space import DARTS_SPACE, CellSpace

_register = keras.saving.register_keras_serializable(package="tfnas")


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

    def __init__(self, channels, stride, operations, bn_fused=None, kernels="auto", **kwargs):
        super().__init__(**kwargs)
        self.channels, self.stride = int(channels), int(stride)
        self.operations = tuple(operations)
        self.bn_fused = bn_fused
        self.kernels = kernels
        self.ops = []
        self.op_indices = []
        for k, name in enumerate(self.operations):
            if name == "none":
                continue
            op = make_operation(name, self.channels, self.stride, affine=False,
                                layer_name=f"{name}", kernels=kernels, dtype=self.dtype_policy)
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
                "operations": list(self.operations), "bn_fused": self.bn_fused, "kernels": self.kernels}


class _Untracked:
    """Holds objects out of sight of Keras' and TensorFlow's tracking (not
    weights of the holder, not in its checkpoints)."""

    def __init__(self, **items):
        self.__dict__.update(items)


@_register
class EdgeStack(keras.layers.Layer):
    """``count`` alike mixed operations (same channels, stride and input
    shape) whose variables are stacked on a leading edge axis: what a
    low-memory cell's loop gathers edge ``k``'s values from.

    One variable per slot instead of one per edge and slot keeps the graph
    small (every variable costs reads, optimizer updates and plumbing in each
    traced pass).  Edge ``k`` is computed by one template :class:`MixedOp`
    evaluated at the gathered values (``keras.StatelessScope``); the
    template's own variables are never read and are not weights of the
    network.  Each edge is initialised as a :class:`MixedOp` of its own is."""

    def __init__(self, count, channels, stride, operations, bn_fused=None, kernels="auto", **kwargs):
        super().__init__(**kwargs)
        self.count, self.channels, self.stride = int(count), int(channels), int(stride)
        self.operations = tuple(operations)
        self.bn_fused = bn_fused
        self.kernels = kernels
        template = MixedOp(self.channels, self.stride, self.operations, bn_fused=bn_fused,
                           kernels=kernels, dtype=self.dtype_policy, name="template")
        for pool in layers_of_type(template, Pool):  # its gradient is traced in a loop
            pool.gradient_recomputes = True
        self._hidden = _Untracked(template=template, stacked=())

    @property
    def template(self) -> MixedOp:
        return self._hidden.template

    @property
    def untracked_layers(self) -> tuple:
        """Seen by :func:`tfnas.ops.layers_of_type` (trace-time switches)."""
        return (self.template,)

    @property
    def stacked_variables(self) -> tuple:
        """Variable ``i`` stacks every edge's value of ``template.variables[i]``."""
        return self._hidden.stacked

    def build(self, x_shape):
        self.template.build(x_shape)
        per_edge = []
        for _ in range(self.count):
            edge = MixedOp.from_config(self.template.get_config())
            edge.build(x_shape)
            per_edge.append([v.numpy() for v in edge.variables])
        # e.g. "sep_conv_3x3.depthwise_1.kernel" (variable names cannot hold "/")
        slot_names = [v.path.split(f"{self.template.name}/", 1)[-1].replace("/", ".")
                      for v in self.template.variables]
        stacked = []
        for i, (slot, name) in enumerate(zip(self.template.variables, slot_names)):
            values = np.stack([edge[i] for edge in per_edge])
            stacked.append(self.add_weight(
                shape=values.shape, dtype=slot.dtype, trainable=slot.trainable,
                initializer=lambda shape, dtype=None, values=values: values,
                aggregation=slot.aggregation, name=name))
        self._hidden.stacked = tuple(stacked)

    def get_config(self):
        return {**super().get_config(), "count": self.count, "channels": self.channels,
                "stride": self.stride, "operations": list(self.operations),
                "bn_fused": self.bn_fused, "kernels": self.kernels}


@_register
class SearchCell(keras.layers.Layer):
    """A search cell: every intermediate node sums a :class:`MixedOp` from each
    earlier node; the output concatenates all intermediate nodes."""

    def __init__(self, channels, reduction, reduction_prev, space=DARTS_SPACE, bn_fused=None,
                 low_memory=False, kernels="auto", **kwargs):
        super().__init__(**kwargs)
        self.kernels = kernels
        self.space = _space(space)
        self.channels = int(channels)
        self.reduction, self.reduction_prev = bool(reduction), bool(reduction_prev)
        self.bn_fused = bn_fused
        self.low_memory = bool(low_memory)
        dt = self.dtype_policy
        if self.reduction_prev:
            self.preprocess0 = FactorizedReduce(self.channels, affine=False, kernels=kernels, dtype=dt,
                                                name="preprocess0")
        else:
            self.preprocess0 = ReLUConvBN(self.channels, 1, 1, affine=False, kernels=kernels, dtype=dt,
                                          name="preprocess0")
        self.preprocess1 = ReLUConvBN(self.channels, 1, 1, affine=False, kernels=kernels, dtype=dt,
                                      name="preprocess1")
        if self.low_memory:
            # One stack of alike edges per loop; a reduction cell's first loop
            # holds its stride-2 edges (from the cell's inputs).
            names = ["reducing_edges", "edges"] if self.reduction else ["edges"]
            self.edge_stacks = [
                EdgeStack(len(ids), self.channels, 2 if self.reduction and g == 0 else 1,
                          self.space.operations, bn_fused=bn_fused, kernels=kernels, dtype=dt,
                          name=names[g])
                for g, ids in enumerate(self.edge_groups())]
        else:
            self.edges = [MixedOp(self.channels, 2 if self.reduction and j < 2 else 1,
                                  self.space.operations, bn_fused=bn_fused, kernels=kernels, dtype=dt,
                                  name=f"edge_{node}_{j}")
                          for node, j in self.space.edge_inputs()]

    def edge_groups(self) -> list:
        """The edge indices each loop of the low-memory form runs, in order:
        a normal cell's edges are all alike; a reduction cell's stride-2 edges
        from its inputs come first, then the rest (every node is complete
        before an edge reads it, as in the reference order)."""
        edges = self.space.edge_inputs()
        if not self.reduction:
            return [list(range(len(edges)))]
        first = [e for e, (_, j) in enumerate(edges) if j < 2]
        rest = [e for e, (_, j) in enumerate(edges) if j >= 2]
        return [first, rest] if rest else [first]

    def build(self, s0_shape, s1_shape, weights_shape=None):
        self.preprocess0.build(s0_shape)
        self.preprocess1.build(s1_shape)
        shapes = [self.preprocess0.compute_output_shape(s0_shape),
                  self.preprocess1.compute_output_shape(s1_shape)]
        if self.low_memory:
            self.edge_stacks[0].build(shapes[1])
            if len(self.edge_stacks) > 1:
                self.edge_stacks[1].build(self.edge_stacks[0].template.compute_output_shape(shapes[1]))
        else:
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
        other by ``tf.while_loop``, one loop per :meth:`edge_groups` entry."""
        edges = self.space.edge_inputs()
        groups = self.edge_groups()
        if not self.reduction:
            nodes = tf.stack(states + [tf.zeros_like(states[1])] * self.space.num_nodes)
            nodes = self._edge_loop(self.edge_stacks[0], groups[0], [j for _, j in edges],
                                    [node for node, _ in edges], nodes, weights, training)
            return tf.concat(tf.unstack(nodes, num=2 + self.space.num_nodes)[2:], axis=-1)
        first = groups[0]
        nodes = tf.stack([tf.zeros_like(states[1][:, ::2, ::2, :])] * self.space.num_nodes)
        nodes = self._edge_loop(self.edge_stacks[0], first, [edges[e][1] for e in first],
                                [edges[e][0] - 2 for e in first], nodes, weights, training,
                                inputs=tf.stack(states))
        if len(groups) > 1:
            rest = groups[1]
            nodes = self._edge_loop(self.edge_stacks[1], rest, [edges[e][1] - 2 for e in rest],
                                    [edges[e][0] - 2 for e in rest], nodes, weights, training)
        return tf.concat(tf.unstack(nodes, num=self.space.num_nodes), axis=-1)

    @staticmethod
    def _edge_loop(stack, edge_ids, sources, targets, nodes, weights, training, inputs=None):
        """For the ``k``-th edge of ``stack`` (cell edge ``edge_ids[k]``), in
        order, add its output on ``inputs[sources[k]]`` (or
        ``nodes[sources[k]]``) to ``nodes[targets[k]]``.  Each iteration
        evaluates the stack's template at edge ``k``'s gathered values, so the
        graph holds one mixed operation, not one per edge; the BN statistics
        it writes are scattered into the stacked statistics."""
        slots = stack.template.variables
        stacked = [tf.convert_to_tensor(v) for v in stack.stacked_variables]
        state_slots = [i for i, v in enumerate(slots) if not v.trainable]
        template = stack.template
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
                # Add y to its target node: padded to the stack's shape (its
                # gradient is one slice; a one-hot mask's is a product and a
                # sum over every node, a scatter's a full copy).
                target = targets[k]
                padding = tf.concat([[[target, num_nodes - 1 - target]],
                                     tf.zeros((4, 2), tf.int32)], axis=0)
                statistics = [tf.tensor_scatter_nd_update(s, [[k]],
                                                          [scope.get_current_value(slots[i])])
                              for s, i in zip(statistics, state_slots)]
                # expand_dims, not y[None]: a strided slice's gradient is a slow full copy.
                update = tf.ensure_shape(tf.pad(tf.expand_dims(y, 0), padding), nodes.shape)
                return (k + 1, nodes + update, *statistics)

            loop_vars = (tf.constant(0), nodes, *[stacked[i] for i in state_slots])
            _, nodes, *statistics = tf.while_loop(lambda k, *_: k < stack.count, body,
                                                  loop_vars, parallel_iterations=2)
            return (nodes, *statistics)

        args = (nodes, tf.gather(weights, edge_ids), *([] if reads_nodes else [inputs]), *stacked)
        if not training:
            return run_edges(*args)[0]
        # Keep no activations: recompute them in the backward pass.
        nodes, *statistics = tf.recompute_grad(run_edges)(*args)
        for i, values in zip(state_slots, statistics):
            stack.stacked_variables[i].assign(values)
        return nodes

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "reduction": self.reduction,
                "reduction_prev": self.reduction_prev, "space": self.space.to_dict(),
                "bn_fused": self.bn_fused, "low_memory": self.low_memory, "kernels": self.kernels}


@_register
class SearchNetwork(CellNetwork):
    """DARTS search network; ``model(x, training=...)`` returns logits.

    ``bn_fused`` goes to every BN (see :class:`tfnas.ops.BatchNorm`):
    ``None`` picks the fused kernel in float32 (fast, first derivatives
    only), ``False`` the differentiable path that second-order search with
    ``hessian="exact"`` needs.  The two alpha tables are drawn independently
    (``alpha_seed`` and ``alpha_seed + 1`` when a seed is given).
    ``kernels`` (a :mod:`tfnas.kernels` setting) goes to every operation.
    """

    def __init__(self, C=16, layers=8, num_classes=10, space=DARTS_SPACE, bn_fused=None,
                 alpha_seed=None, low_memory=False, **kwargs):
        if int(layers) < 1 or int(C) < 1:
            raise ValueError("search network: C and layers must be positive")
        self.space = _space(space)
        self.bn_fused = bn_fused
        self.low_memory = bool(low_memory)
        self.alpha_seed = alpha_seed
        nodes = self.space.num_nodes
        super().__init__(C, layers, num_classes, cell_plan(C, layers, lambda reduction: nodes),
                         stem_bn_fused=bn_fused, **kwargs)
        self.C = self.init_channels
        shape = (self.space.num_edges, len(self.space.operations))
        seeds = (None, None) if alpha_seed is None else (int(alpha_seed), int(alpha_seed) + 1)
        self.alphas_normal = self.add_weight(shape=shape, name="alphas_normal",
                                             initializer=_alpha_initializer(seeds[0]))
        self.alphas_reduce = self.add_weight(shape=shape, name="alphas_reduce",
                                             initializer=_alpha_initializer(seeds[1]))

    def make_cell(self, slot):
        return SearchCell(slot.channels, slot.reduction, slot.reduction_prev, self.space,
                          bn_fused=self.bn_fused, low_memory=self.low_memory, kernels=self.kernels,
                          dtype=self.dtype_policy, name=f"cell_{slot.index}")

    def build_cell(self, cell, s0_shape, s1_shape):
        cell.build(s0_shape, s1_shape)
        return cell.compute_output_shape(s0_shape, s1_shape)

    def cell_context(self, training):
        return {False: tf.nn.softmax(self.alphas_normal, axis=-1),
                True: tf.nn.softmax(self.alphas_reduce, axis=-1)}

    def call_cell(self, cell, s0, s1, training, context):
        return cell(s0, s1, context[cell.reduction], training=training)

    @property
    def alpha_variables(self) -> list:
        return [self.alphas_normal, self.alphas_reduce]

    @property
    def weight_variables(self) -> list:
        alpha_ids = {id(v) for v in self.alpha_variables}
        return [v for v in self.trainable_variables if id(v) not in alpha_ids]

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
                "low_memory": self.low_memory, "kernels": self.kernels}


def _alpha_initializer(seed):
    # One initializer per table: a reused one draws the same values twice.
    return keras.initializers.RandomNormal(stddev=1e-3, seed=seed)
