"""ENAS's micro-search controller, its REINFORCE trainer and a uniform sampler.

An architecture is an int32 tensor of shape ``(2, 4 * num_nodes)``: row 0 the
normal cell, row 1 the reduction cell; per intermediate node (2, 3, ...) the
four values ``[input_1, op_1, input_2, op_2]``, inputs in ``0 .. node - 1``
and operations indices into the space's ``operations``.

:class:`EnasController` is the reference's controller (Pham et al., 2018;
facts in ``ENAS.md``): a one-layer LSTM of ``lstm_size`` units without bias
samples, per cell and per node, two inputs (by attention over the earlier
nodes' anchors), then two operations, then takes one more step whose output
is the node's anchor; the reduction cell continues from the normal cell's
final LSTM state.  The LSTM kernel acts on ``[x, h]``; its gates are in
the order input, forget, output, candidate (ENAS.md does not fix an order;
with a symmetric initialisation and no bias -- so no forget bias -- it only
names the kernel's column blocks).  All parameters are initialised
U(-0.1, 0.1) except the learned operation bias.

Operation biases generalise the reference's per-index values by name: an
operation is a convolution when its name contains ``conv`` (separable and
dilated convolutions; every such operation of these spaces has parameters),
see :func:`is_convolution`.  Convolutions start with the learned bias 10,
the others 0; in the normal cell a fixed bias of +0.25 (convolutions) or
-0.25 (the others) is added to the operation logits.  In the ENAS space this
is exactly the reference's ``[10, 10, 0, 0, 0]`` and ``[+.25, +.25, -.25,
-.25, -.25]``; in the DARTS space the two dilated convolutions count as
convolutions (they are depthwise-separable convolutions with a dilation).

Two properties of the reference's constants (kept as defaults; tests show
both):

- logits are bounded: input logits by ``±1.10``, operation logits by
  ``±1.10 / 2.5`` (plus the fixed bias), so no decision gets sharp -- an
  input of a node with k choices reaches at most ``max_probability(k, 1.10)``
  (0.90 for k = 2, 0.64 for k = 6), an operation of five about 0.38;
- the learned bias 10 saturates the tanh of the convolutions' logits: in
  float32 ``tanh(10 + h.w)`` is exactly 1 (for ``h.w > -1``), its gradient
  exactly 0, so the convolutions' logits (and their ``w_soft`` columns and
  bias) never move from ``+1.10 / 2.5``.  The controller can lower the other operations or
  raise them to a tie, never above a convolution, and never prefers one
  convolution over another.  ``op_bias_init`` / ``normal_op_bias`` /
  ``tanh_constant`` change this (not the reference).

:class:`Reinforce` trains the controller (reward plus entropy bonus, moving
baseline, Adam); :class:`UniformSampler` has the controller's sampling
interface and samples every decision uniformly (random search with weight
sharing).  Random draws come from a ``tf.random.Generator`` held by the
sampler, so a checkpoint restores the stream.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfnas.genotypes import DARTS_OPS_NO_NONE, Genotype, GenotypeError
from tfnas.space import CellSpace

__all__ = [
    "ENAS_MICRO_OPS", "ENAS_MICRO_SPACE", "DARTS_SAMPLING_SPACE", "SAMPLING_SPACES",
    "ArchitectureError", "resolve_sampling_space", "is_convolution", "learned_op_bias_init",
    "normal_cell_op_bias", "decision_sizes", "max_probability", "validate_arch",
    "arch_to_genotype", "genotype_to_arch", "reference_loose_ends",
    "Rollout", "EnasController", "UniformSampler", "ReinforceConfig", "Reinforce",
]

_register = keras.saving.register_keras_serializable(package="tfnas")

# ENAS's operation order; its "identity" is tfnas's skip_connect.
ENAS_MICRO_OPS = ("sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3", "skip_connect")
ENAS_MICRO_SPACE = CellSpace(ENAS_MICRO_OPS, 5, "loose_ends")
DARTS_SAMPLING_SPACE = CellSpace(DARTS_OPS_NO_NONE, 4, "all")
SAMPLING_SPACES = {"enas": ENAS_MICRO_SPACE, "darts": DARTS_SAMPLING_SPACE}

_CONV_BIAS_INIT, _OTHER_BIAS_INIT = 10.0, 0.0
_CONV_NORMAL_BIAS, _OTHER_NORMAL_BIAS = 0.25, -0.25
# Logit of an impossible choice (padding): exp underflows to exactly 0 and
# 0 * log p stays finite, unlike -inf.
_MASKED = -1e9


class ArchitectureError(GenotypeError):
    """An architecture tensor that does not encode two cells of the space."""


def resolve_sampling_space(space) -> CellSpace:
    """A :class:`CellSpace` from itself, a name in :data:`SAMPLING_SPACES` or
    a :meth:`CellSpace.to_dict` mapping.  ``none`` is dropped from the
    operations: a sampled edge always carries an operation (a DARTS space
    with 4 nodes becomes :data:`DARTS_SAMPLING_SPACE`)."""
    if isinstance(space, str):
        if space not in SAMPLING_SPACES:
            raise ValueError(f"unknown sampling space {space!r}; "
                             f"known: {', '.join(SAMPLING_SPACES)}")
        return SAMPLING_SPACES[space]
    if isinstance(space, dict):
        space = CellSpace.from_dict(space)
    if not isinstance(space, CellSpace):
        raise ValueError(f"a sampling space is a CellSpace, a name or a dict, "
                         f"not {type(space).__name__}")
    if "none" in space.operations:
        space = CellSpace(tuple(op for op in space.operations if op != "none"), space.num_nodes,
                          space.concat)
    return space


def is_convolution(op: str) -> bool:
    """Whether ``op`` gets the reference's convolution biases (name contains 'conv')."""
    return "conv" in op


def learned_op_bias_init(space: CellSpace) -> tuple:
    """Initial value of the learned operation bias: 10 for convolutions, else 0."""
    return tuple(_CONV_BIAS_INIT if is_convolution(op) else _OTHER_BIAS_INIT
                 for op in space.operations)


def normal_cell_op_bias(space: CellSpace) -> tuple:
    """The fixed operation-logit bias of the normal cell: +0.25 / -0.25."""
    return tuple(_CONV_NORMAL_BIAS if is_convolution(op) else _OTHER_NORMAL_BIAS
                 for op in space.operations)


def decision_sizes(space: CellSpace) -> tuple:
    """Number of choices at each position of a cell's row, ``(node, K, node, K)``
    per intermediate node (``node`` = 2, 3, ...; K operations)."""
    k = len(space.operations)
    return tuple(size for node in range(2, 2 + space.num_nodes) for size in (node, k, node, k))


def max_probability(choices: int, tanh_constant: float) -> float:
    """The largest probability one of ``choices`` options can reach when every
    logit is ``tanh_constant * tanh(.)``."""
    top = math.exp(tanh_constant)
    return top / (top + (choices - 1) * math.exp(-tanh_constant))


def validate_arch(arch, space: CellSpace) -> np.ndarray:
    """``arch`` as an int32 array of shape (2, 4N), or :class:`ArchitectureError`."""
    values = np.asarray(arch)
    shape = (2, 4 * space.num_nodes)
    if values.shape != shape or not np.issubdtype(values.dtype, np.integer):
        raise ArchitectureError(f"an architecture is an integer array of shape {shape}, "
                                f"got {values.dtype} {values.shape}")
    limits = np.array(decision_sizes(space))
    bad = np.argwhere((values < 0) | (values >= limits))
    if bad.size:
        cell, pos = bad[0]
        what = "operation" if pos % 2 else "input"
        raise ArchitectureError(
            f"{('normal', 'reduce')[cell]} cell, node {2 + pos // 4}: {what} {values[cell, pos]} "
            f"out of range 0..{limits[pos] - 1}")
    return values.astype(np.int32)


def _cell_edges(row, space: CellSpace) -> tuple:
    return tuple((space.operations[row[i + 1]], int(row[i])) for i in range(0, len(row), 2))


def arch_to_genotype(arch, space, name=None) -> Genotype:
    """The :class:`Genotype` of an architecture, edges ``(op, input)`` two per
    node, concat by the space's rule (:meth:`CellSpace.concat_of`).

    With loose-end concat, the reference also concatenates an *input* node
    (0 or 1) that no node uses; a genotype's concat lists intermediate nodes
    only, so such input nodes are dropped here (they remain recoverable from
    the edges: :func:`reference_loose_ends`).  A child network that follows
    the reference must add them itself."""
    space = resolve_sampling_space(space)
    values = validate_arch(arch, space)
    cells = [_cell_edges(row, space) for row in values]
    return Genotype(cells[0], space.concat_of(cells[0]), cells[1], space.concat_of(cells[1]),
                    name=name)


def genotype_to_arch(genotype: Genotype, space) -> np.ndarray:
    """The inverse of :func:`arch_to_genotype`: an int32 array (2, 4N).
    Raises :class:`ArchitectureError` for operations outside the space, another
    node count, or a concat the space's rule does not produce."""
    space = resolve_sampling_space(space)
    rows = []
    for kind in ("normal", "reduce"):
        cell = genotype.cell(kind)
        if cell.num_nodes != space.num_nodes:
            raise ArchitectureError(f"{kind} cell has {cell.num_nodes} nodes; the space has "
                                    f"{space.num_nodes}")
        unknown = sorted(set(cell.operations) - set(space.operations))
        if unknown:
            raise ArchitectureError(f"{kind} cell uses operations outside the space: {unknown}")
        if cell.concat != space.concat_of(cell.edges):
            raise ArchitectureError(f"{kind} cell concat {list(cell.concat)} is not the space's "
                                    f"{space.concat!r} concat {list(space.concat_of(cell.edges))}")
        rows.append([v for op, idx in cell.edges for v in (idx, space.operations.index(op))])
    return np.array(rows, dtype=np.int32)


def reference_loose_ends(cell_row) -> tuple:
    """Every node, input nodes 0 and 1 included, that no node of this cell
    row (``[input_1, op_1, input_2, op_2]`` per node) uses: the nodes the
    reference's cell concatenates."""
    row = np.asarray(cell_row)
    used = {int(v) for v in row[0::2]}
    return tuple(n for n in range(2 + len(row) // 4) if n not in used)


def _new_generator(seed) -> tf.random.Generator:
    if seed is None:
        return tf.random.Generator.from_non_deterministic_state()
    return tf.random.Generator.from_seed(int(seed))


def _positions(space: CellSpace) -> int:
    return 4 * space.num_nodes


def _as_batch(arch):
    """``(batched arch, was_single)``: rank-2 arches get a batch axis."""
    arch = tf.convert_to_tensor(arch)
    if arch.dtype != tf.int32:
        arch = tf.cast(arch, tf.int32)
    if arch.shape.rank == 2:
        return arch[tf.newaxis], True
    if arch.shape.rank != 3:
        raise ArchitectureError(f"an architecture has rank 2 (or 3 for a batch), "
                                f"not {arch.shape.rank}")
    return arch, False


class Rollout(NamedTuple):
    """One controller pass over a batch: ``arch`` int32 (B, 2, 4N);
    ``log_prob``, ``entropy`` (B,); ``probabilities`` (B, 2, 4N, max choices);
    ``lstm_steps`` int32 scalar."""

    arch: tf.Tensor
    log_prob: tf.Tensor
    entropy: tf.Tensor
    probabilities: tf.Tensor
    lstm_steps: tf.Tensor


class _SamplerCache:
    """One traced sampling function for every batch size (the size is a
    tensor argument); kept out of Keras's attribute tracking."""

    def __init__(self, sample_impl):
        self._impl = sample_impl
        self._fn = tf.function(self._traced, autograph=False,
                               input_signature=[tf.TensorSpec([], tf.int32)])
        self.trace_count = 0

    def __call__(self, n):
        return self._fn(tf.convert_to_tensor(n, tf.int32))

    def _traced(self, n):
        self.trace_count += 1  # Python side effect: runs once per trace
        return self._impl(n)


class _Sampling:
    """The sampling interface of the controller and the uniform sampler
    (both keep a :class:`_SamplerCache` as ``_sampler``)."""

    @property
    def sampling_trace_count(self) -> int:
        return self._sampler.trace_count

    def sample(self):
        """``(arch, log_prob, entropy)``: arch int32 (2, 4N), scalars."""
        arch, log_prob, entropy = self._sampler(1)
        return arch[0], log_prob[0], entropy[0]

    def sample_many(self, n):
        """``n`` independent architectures: (n, 2, 4N), (n,), (n,); one
        trace serves every ``n`` and :meth:`sample`."""
        return self._sampler(n)


@_register
class EnasController(_Sampling, keras.Model):
    """The ENAS micro-search controller (see the module docstring).

    ``space``: a :class:`CellSpace`, ``"enas"`` or ``"darts"``.
    ``tanh_constant``: input logits are ``tanh_constant * tanh(.)``, operation
    logits ``tanh_constant / op_tanh_reduce * tanh(.)``; ``None``: no tanh,
    unbounded logits (the reference's code path when its constant is unset).
    ``op_bias_init`` / ``normal_op_bias``: one value per operation, default
    :func:`learned_op_bias_init` / :func:`normal_cell_op_bias`.
    ``seed``: seeds the initial weights and the sampling stream (``rng``, a
    ``tf.random.Generator``, not among the Keras variables: checkpoint it
    next to the model, see :meth:`Reinforce.trackables`).

    :meth:`sample` / :meth:`sample_many` draw architectures (one trace for
    every batch size); :meth:`evaluate` / :meth:`rollout` give the
    log-probability, entropy and per-decision distributions of given
    architectures (differentiable; valid architectures only, see
    :func:`validate_arch`).
    """

    def __init__(self, space="enas", lstm_size=64, tanh_constant=1.10, op_tanh_reduce=2.5,
                 op_bias_init=None, normal_op_bias=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.space = resolve_sampling_space(space)
        self.lstm_size = int(lstm_size)
        self.tanh_constant = None if tanh_constant is None else float(tanh_constant)
        self.op_tanh_reduce = float(op_tanh_reduce)
        self.op_bias_init = self._per_operation(op_bias_init, learned_op_bias_init, "op_bias_init")
        self.normal_op_bias = self._per_operation(normal_op_bias, normal_cell_op_bias,
                                                  "normal_op_bias")
        self.seed = seed
        self.rng = _new_generator(seed)
        self._create_weights(seed)
        self._normal_bias = tf.constant([self.normal_op_bias], tf.float32)
        self._max_choices = max(decision_sizes(self.space))
        self._sampler = _SamplerCache(self._sample)
        self.built = True

    def _create_weights(self, seed) -> None:
        size, ops = self.lstm_size, len(self.space.operations)
        shapes = {"w_lstm": (2 * size, 4 * size), "g_emb": (1, size), "w_emb": (ops, size),
                  "w_soft": (size, ops), "w_attn_1": (size, size), "w_attn_2": (size, size),
                  "v_attn": (size, 1)}
        for i, (name, shape) in enumerate(shapes.items()):
            init = keras.initializers.RandomUniform(
                -0.1, 0.1, seed=None if seed is None else 1000 * int(seed) + i)
            setattr(self, name, self.add_weight(shape=shape, initializer=init, name=name))
        self.b_soft = self.add_weight(
            shape=(ops,), name="b_soft",
            initializer=keras.initializers.Constant(self.op_bias_init))

    def _per_operation(self, values, default, what) -> tuple:
        values = default(self.space) if values is None else tuple(float(v) for v in values)
        if len(values) != len(self.space.operations):
            raise ValueError(f"{what} needs one value per operation "
                             f"({len(self.space.operations)}), got {len(values)}")
        return values

    # ----------------------------------------------------------------- public
    @property
    def lstm_steps_per_architecture(self) -> int:
        """2 input-node steps plus 5 steps per node, per cell."""
        return 2 * (2 + 5 * self.space.num_nodes)


    def evaluate(self, arch):
        """``(log_prob, entropy, probabilities)`` of ``arch`` (2, 4N) or a batch
        (B, 2, 4N).  ``probabilities[..., cell, pos, :]`` is the distribution of
        the value at that position given the earlier decisions, zero-padded to
        the largest choice count.  The entropy carries no gradient."""
        rollout = self.rollout(arch)
        return rollout.log_prob, rollout.entropy, rollout.probabilities

    def rollout(self, arch) -> Rollout:
        """The controller's pass over given architectures (2, 4N) or (B, 2, 4N):
        a :class:`Rollout` (``lstm_steps`` counts the LSTM steps run per
        architecture)."""
        batch_arch, single = _as_batch(arch)
        rollout = self._rollout(tf.shape(batch_arch)[0], forced=batch_arch)
        if single:
            return Rollout(*(part[0] for part in rollout[:4]), rollout.lstm_steps)
        return rollout

    def log_prob(self, arch):
        return self.evaluate(arch)[0]

    def decision_probabilities(self, arch):
        return self.evaluate(arch)[2]

    def call(self, arch):
        return self.log_prob(arch)

    def get_config(self):
        return {**super().get_config(), "space": self.space.to_dict(),
                "lstm_size": self.lstm_size, "tanh_constant": self.tanh_constant,
                "op_tanh_reduce": self.op_tanh_reduce, "op_bias_init": list(self.op_bias_init),
                "normal_op_bias": list(self.normal_op_bias), "seed": self.seed}

    # --------------------------------------------------------------- rollout
    def _sample(self, n: int):
        seeds = self.rng.make_seeds(2 * _positions(self.space))
        rollout = self._rollout(n, seeds=seeds)
        return rollout.arch, rollout.log_prob, rollout.entropy

    def _rollout(self, batch, forced=None, seeds=None) -> Rollout:
        """Both cells; ``forced`` (B, 2, 4N) evaluates given choices, else
        decision ``d`` of the (2, 4N) layout samples with ``seeds[:, d]``.
        Python loops unroll every LSTM step into the graph: a small space
        traces fast (a ``tf.while_loop`` over the nodes, tried, ran slower and
        cost the same to trace whatever the space)."""
        weights = {v.name: tf.convert_to_tensor(v) for v in self.trainable_variables}
        weights["v_attn"] = tf.reshape(weights["v_attn"], [-1])
        zeros = tf.zeros(tf.stack([batch, self.lstm_size]))
        state = (zeros, zeros, tf.constant(0, tf.int32))
        width = _positions(self.space)
        # one column per decision, unstacked once (fewer graph ops than slicing)
        if forced is not None:
            columns = tf.unstack(tf.reshape(forced, tf.stack([batch, 2 * width])), 2 * width, 1)
        else:
            columns = tf.unstack(seeds, 2 * width, axis=1)
        cells = []
        for cell in range(2):
            result, state = self._cell_rollout(weights, cell == 0, state, forced is not None,
                                               columns[cell * width:(cell + 1) * width])
            cells.append(result)
        arch, log_prob, entropy, probs = (list(parts) for parts in zip(*cells))
        return Rollout(tf.stack(arch, 1), tf.add_n(log_prob), tf.add_n(entropy),
                       tf.stack(probs, 1), state[2])

    def _cell_rollout(self, weights, normal, state, forced, columns):
        """One cell: ``((arch row, log_prob, entropy, probabilities), state)``;
        ``columns[pos]`` is the forced choice (``forced``) or the seed of the
        decision at ``pos``."""
        start = tf.tile(weights["g_emb"], tf.stack([tf.shape(state[0])[0], 1]))
        anchors, keys = [], []
        for _ in range(2):  # the input nodes: zero anchors
            h, state = self._lstm_step(weights, start, state)
            anchors.append(tf.zeros_like(h))
            keys.append(h @ weights["w_attn_1"])
        decided = [None] * _positions(self.space)
        for node in range(self.space.num_nodes):
            node_anchors, node_keys = tf.stack(anchors, 1), tf.stack(keys, 1)
            x = start
            for pos in (4 * node, 4 * node + 2):  # input_1, input_2
                h, state = self._lstm_step(weights, x, state)
                logits = self._input_logits(weights, h, node_keys)
                decided[pos] = self._decide(logits, forced, columns[pos])
                pick = tf.one_hot(decided[pos][0], len(anchors))[:, tf.newaxis, :]
                x = tf.squeeze(pick @ node_anchors, 1)
            for pos in (4 * node + 1, 4 * node + 3):  # op_1, op_2
                h, state = self._lstm_step(weights, x, state)
                decided[pos] = self._decide(self._op_logits(weights, h, normal), forced,
                                            columns[pos])
                # one-hot product, not gather: a dense gradient for the optimizer
                x = tf.one_hot(decided[pos][0], len(self.space.operations)) @ weights["w_emb"]
            h, state = self._lstm_step(weights, x, state)  # the node's anchor
            anchors.append(h)
            keys.append(h @ weights["w_attn_1"])
        choice, log_prob, entropy, probs = zip(*decided)
        return (tf.stack(choice, 1), tf.add_n(log_prob), tf.add_n(entropy),
                tf.stack(probs, 1)), state

    def _lstm_step(self, weights, x, state):
        c, h, steps = state
        gates = tf.concat([x, h], axis=1) @ weights["w_lstm"]
        i, f, o, g = tf.split(gates, 4, axis=1)
        c = tf.sigmoid(i) * tf.tanh(g) + tf.sigmoid(f) * c
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, (c, h, steps + 1)

    def _input_logits(self, weights, h, keys):
        """Attention over the earlier nodes (``keys``: B, nodes, H)."""
        query = tf.tanh(keys + tf.expand_dims(h @ weights["w_attn_2"], 1))
        logits = tf.reduce_sum(query * weights["v_attn"], axis=2)
        if self.tanh_constant is not None:
            logits = self.tanh_constant * tf.tanh(logits)
        return self._pad(logits)

    def _op_logits(self, weights, h, normal):
        logits = h @ weights["w_soft"] + weights["b_soft"]
        if self.tanh_constant is not None:
            logits = (self.tanh_constant / self.op_tanh_reduce) * tf.tanh(logits)
        if normal:
            logits = logits + self._normal_bias
        return self._pad(logits)

    def _pad(self, logits):
        """Pad to the widest decision with logits of probability exactly 0."""
        return tf.pad(logits, [[0, 0], [0, self._max_choices - logits.shape[1]]],
                      constant_values=_MASKED)

    def _decide(self, logits, forced, column):
        """``(choice, log p(choice), entropy, probabilities)`` of one decision;
        ``column``: the forced choices or the seed."""
        log_probs = tf.nn.log_softmax(logits)
        if forced:
            choice = column
        else:
            choice = tf.squeeze(tf.random.stateless_categorical(logits, 1, seed=column,
                                                                dtype=tf.int32), 1)
        chosen = tf.reduce_sum(tf.one_hot(choice, self._max_choices) * log_probs, axis=1)
        probs = tf.exp(log_probs)
        # masked entries: 0 * (-1e9) = 0, no NaN
        entropy = tf.stop_gradient(-tf.reduce_sum(probs * log_probs, axis=1))
        return choice, chosen, entropy, probs


class UniformSampler(_Sampling, tf.Module):
    """Every decision uniform over its choices (random search with weight
    sharing, Li & Talwalkar 2019), with the controller's sampling interface;
    every architecture of the space has the same probability."""

    def __init__(self, space="enas", seed=None, name="uniform_sampler"):
        super().__init__(name=name)
        self.space = resolve_sampling_space(space)
        self.rng = _new_generator(seed)
        self._sizes = decision_sizes(self.space)
        self._entropy = 2 * sum(math.log(k) for k in self._sizes)
        self._sampler = _SamplerCache(self._sample)


    def evaluate(self, arch):
        """``(log_prob, entropy, probabilities)`` as :meth:`EnasController.evaluate`."""
        batch_arch, single = _as_batch(arch)
        rows = [np.pad(np.full(k, 1.0 / k), (0, max(self._sizes) - k)) for k in self._sizes]
        probs = tf.constant(np.stack([rows, rows]), tf.float32)
        batch = tf.shape(batch_arch)[0]
        entropy = tf.fill(batch[tf.newaxis], tf.constant(self._entropy, tf.float32))
        probs = tf.tile(probs[tf.newaxis], tf.stack([batch, 1, 1, 1]))
        if single:
            return -entropy[0], entropy[0], probs[0]
        return -entropy, entropy, probs

    def log_prob(self, arch):
        return self.evaluate(arch)[0]

    def trackables(self) -> dict:
        return {"sampler_rng": self.rng}

    def _sample(self, n: int):
        sizes = self._sizes * 2
        seeds = self.rng.make_seeds(len(sizes))
        columns = [tf.random.stateless_uniform([n], seed=seeds[:, d], minval=0, maxval=k,
                                               dtype=tf.int32) for d, k in enumerate(sizes)]
        arch = tf.reshape(tf.stack(columns, 1), [n, 2, len(self._sizes)])
        entropy = tf.fill([n], tf.constant(self._entropy, tf.float32))
        return arch, -entropy, entropy


@dataclass(frozen=True)
class ReinforceConfig:
    """The controller's optimisation (the reference values)."""

    learning_rate: float = 0.0035  # Adam
    beta_1: float = 0.0
    beta_2: float = 0.999
    epsilon: float = 1e-3
    entropy_weight: float = 1e-4   # R = reward + entropy_weight * entropy
    baseline_decay: float = 0.99   # b <- b - (1 - decay) * (b - R)
    samples_per_update: int = 10   # gradients averaged per Adam step

    def __post_init__(self):
        if int(self.samples_per_update) != self.samples_per_update or self.samples_per_update < 1:
            raise ValueError(f"samples_per_update must be a positive integer, "
                             f"not {self.samples_per_update!r}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), not {self.baseline_decay!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> ReinforceConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Reinforce:
    """REINFORCE for an :class:`EnasController`, as the reference.

    One :meth:`update` samples ``samples_per_update`` architectures from the
    current controller, scores each with ``reward_fn(arch)`` (arch int32
    (2, 4N); returns a number or a scalar tensor), and per sample, in order:
    ``R = reward + entropy_weight * entropy``; the baseline moves
    ``b <- b - (1 - decay) * (b - R)``; the advantage is ``R - b`` with the
    *updated* b (ENAS.md does not fix the order; the reference's code moves
    b before it forms the loss, and so does this class).  The loss is the mean of
    ``-log p(arch) * advantage``, i.e. the gradients of the samples are
    averaged, and one Adam step (Keras Adam has the reference's
    epsilon-outside-the-bias-correction form) is taken.  No clipping, no L2.

    ``update(reward_fn)`` calls ``reward_fn`` in Python (sampling and the
    gradient step are traced once each); ``update(reward_fn, traced=True)``
    runs the whole update as one ``tf.function`` and needs a traceable
    ``reward_fn``, called in a ``tf.map_fn`` loop (traced once, samples in
    order).  Pass the same callable every time: one trace per callable.
    """

    def __init__(self, controller: EnasController, config: ReinforceConfig | None = None):
        self.controller = controller
        self.config = config or ReinforceConfig()
        cfg = self.config
        self.optimizer = keras.optimizers.Adam(
            learning_rate=cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2,
            epsilon=cfg.epsilon, name="controller_adam")
        self.optimizer.build(controller.trainable_variables)
        self.baseline = tf.Variable(0.0, trainable=False, name="controller_baseline")
        self._apply_fn = tf.function(self._apply, autograph=False)
        self._traced_updates = {}
        self.last_archs = None    # numpy (n, 2, 4N) of the last update
        self.last_rewards = None  # numpy (n,) raw rewards of the last update

    def trackables(self) -> dict:
        """What a checkpoint must hold to resume the controller exactly."""
        return {"controller": self.controller, "controller_optimizer": self.optimizer,
                "controller_baseline": self.baseline, "controller_rng": self.controller.rng}

    def update(self, reward_fn, traced: bool = False) -> dict:
        """One controller update; returns means over the samples as floats:
        ``reward``, ``reward_with_entropy``, ``advantage``, ``entropy``,
        ``log_prob``, ``loss``, and the ``baseline`` after the update."""
        if traced:
            fn = self._traced_updates.get(reward_fn)
            if fn is None:
                fn = tf.function(lambda: self._traced_update(reward_fn))
                self._traced_updates[reward_fn] = fn
            archs, rewards, stats = fn()
        else:
            archs, _, _ = self.controller.sample_many(self.config.samples_per_update)
            rewards = tf.stack([_scalar_reward(reward_fn(arch)) for arch in tf.unstack(archs)])
            stats = self._apply_fn(archs, rewards)
        self.last_archs, self.last_rewards = archs.numpy(), rewards.numpy()
        return {name: float(value) for name, value in stats.items()}

    def _traced_update(self, reward_fn):
        archs, _, _ = self.controller._sample(self.config.samples_per_update)
        rewards = tf.map_fn(lambda arch: _scalar_reward(reward_fn(arch)), archs,
                            fn_output_signature=tf.float32, parallel_iterations=1)
        return archs, rewards, self._apply(archs, rewards)

    def _apply(self, archs, rewards):
        cfg = self.config
        variables = self.controller.trainable_variables
        with tf.GradientTape() as tape:
            log_prob, entropy, _ = self.controller.evaluate(archs)
            total = rewards + cfg.entropy_weight * entropy
            advantage = self._advance_baseline(total)
            loss = tf.reduce_mean(-log_prob * advantage)
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, variables)
        return {"reward": tf.reduce_mean(rewards), "reward_with_entropy": tf.reduce_mean(total),
                "advantage": tf.reduce_mean(advantage), "entropy": tf.reduce_mean(entropy),
                "log_prob": tf.reduce_mean(log_prob), "loss": loss,
                "baseline": self.baseline.read_value()}

    def _advance_baseline(self, total):
        """Move the baseline sample by sample; the advantages (no gradient)."""
        decay = self.config.baseline_decay
        baseline = self.baseline.read_value()
        advantages = []
        for reward in tf.unstack(total):
            baseline = baseline - (1.0 - decay) * (baseline - reward)
            advantages.append(reward - baseline)
        self.baseline.assign(baseline)
        return tf.stop_gradient(tf.stack(advantages))


def _scalar_reward(value):
    return tf.reshape(tf.cast(tf.convert_to_tensor(value), tf.float32), [])
