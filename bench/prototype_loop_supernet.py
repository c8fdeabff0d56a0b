#!/usr/bin/env python3
"""Prototype, not tfnas code: can a DARTS supernet step fit under the PyTorch
reference's peak memory (2.6 GB first order)?

A functional supernet (raw TensorFlow ops, no Keras layers; the DARTS
operations without ``none``, non-affine fused BN, per-edge weights stacked
``[14, ...]`` per cell), C=16, 8 layers, batch 16, random 32x32 inputs; a
first-order step = alpha pass + weight pass with plain updates.  Forms:

* ``--form unrolled``: every edge traced (what tfnas's supernet does);
* ``--form loop``: each normal cell runs its 14 edges as one
  ``tf.while_loop`` (states a ``[6, B, H, W, C]`` loop variable, the edge's
  source, weights and alphas gathered by edge index): one traced mixed
  operation per cell;
* ``--per-node``: with ``loop``, one loop per node instead of per cell;
* ``--recompute``: each cell wrapped in ``tf.recompute_grad``;
* ``--same-padding``: stride-1 convolutions and pools with SAME padding
  (symmetric there) instead of explicit pads, 1x1 convolutions as matmuls.

The padding and stride-2 dilated convolutions are simplified (costs, not
numbers, are the point).  Results and their reading: docs/benchmarks.md, "A
path under the reference's memory".  Run each form in its own process (peak
RSS is per process):

    python bench/prototype_loop_supernet.py --form loop --recompute

Last line: {"form", "recompute", "per_node", "s_per_step", "first_call_s",
"peak_rss_mb", "graph_ops", ...}
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfnas.runtime import configure_threads, quiet_tensorflow  # noqa: E402

_p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_p.add_argument("--form", choices=("unrolled", "loop"), default="loop")
_p.add_argument("--recompute", action="store_true")
_p.add_argument("--per-node", action="store_true")
_p.add_argument("--init-channels", type=int, default=16)
_p.add_argument("--layers", type=int, default=8)
_p.add_argument("--batch-size", type=int, default=16)
_p.add_argument("--steps", type=int, default=3)
_p.add_argument("--same-padding", action="store_true",
                help="stride 1: SAME padding instead of explicit pads, 1x1 convs as matmuls")
_p.add_argument("--intra", type=int, default=1, help="intra-op threads (search.py: 1)")
ARGS = _p.parse_args()

quiet_tensorflow()
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

configure_threads(ARGS.intra, 2)
MODE, RECOMPUTE = ARGS.form, ARGS.recompute
C0, LAYERS, BATCH, STEPS = ARGS.init_channels, ARGS.layers, ARGS.batch_size, ARGS.steps
# operations: max/avg pool 3x3 (+BN), skip (stride 2: FactorizedReduce), sep conv 3x3/5x5,
# dil conv 3x3/5x5; 'none' is skipped (its alpha still takes part in the softmax)
NODES = 4
EDGES = sum(i + 2 for i in range(NODES))  # 14
SRC = [j for i in range(NODES) for j in range(i + 2)]
DST = [i for i in range(NODES) for j in range(i + 2)]
rng = np.random.default_rng(0)


def var(shape, scale=0.1):
    return tf.Variable(rng.normal(size=shape).astype("float32") * scale)


def bn(x):  # non-affine, batch statistics
    c = x.shape[-1]
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, tf.ones([c]), tf.zeros([c]), is_training=True)
    return y


def dw(x, k, ksize, stride, dil):
    if stride == 1 and ARGS.same_padding:   # odd (dilated) kernels at stride 1: SAME is symmetric
        return tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME", dilations=[dil, dil])
    pad = dil * (ksize - 1) // 2
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    if stride == 2 and dil > 1:
        y = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "VALID", dilations=[dil, dil])
        return y[:, ::2, ::2, :]
    return tf.nn.depthwise_conv2d(x, k, [1, stride, stride, 1], "VALID", dilations=[dil, dil])


def pw(x, w):
    if ARGS.same_padding:   # a 1x1 convolution as a matmul (as tfnas.ops does)
        b, h, wd, c = x.shape
        return tf.reshape(tf.reshape(x, [-1, c]) @ w[0, 0], [b, h, wd, w.shape[-1]])
    return tf.nn.conv2d(x, w, 1, "VALID")


def pool(x, kind, stride):
    if stride == 1 and ARGS.same_padding:   # TF's SAME average pool excludes the padding
        return (tf.nn.max_pool2d if kind == "max" else tf.nn.avg_pool2d)(x, 3, 1, "SAME")
    if kind == "max":
        xp = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=-1e30)
        return tf.nn.max_pool2d(xp, 3, stride, "VALID")
    xp = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    ones = tf.pad(tf.ones_like(x[:1, :, :, :1]), [[0, 0], [1, 1], [1, 1], [0, 0]])
    return tf.nn.avg_pool2d(xp, 3, stride, "VALID") / tf.nn.avg_pool2d(ones, 3, stride, "VALID")


def edge_weights(C, reduction):
    """Per-op weight shapes of one mixed op."""
    s = {}
    for name, k in (("sep3", 3), ("sep5", 5)):
        s[name] = [(k, k, C, 1), (1, 1, C, C), (k, k, C, 1), (1, 1, C, C)]
    for name, k in (("dil3", 3), ("dil5", 5)):
        s[name] = [(k, k, C, 1), (1, 1, C, C)]
    s["fr"] = [(1, 1, C, C // 2), (1, 1, C, C // 2)]  # FactorizedReduce (stride-2 skip)
    return s


def mixed(x, w, a, stride):
    """x: input, w: dict of weight lists, a: [7] softmax weights (none excluded)."""
    outs = []
    outs.append(bn(pool(x, "max", stride)))
    outs.append(bn(pool(x, "avg", stride)))
    if stride == 1:
        outs.append(x)
    else:
        r = tf.nn.relu(x)
        outs.append(bn(tf.concat([pw(r[:, ::2, ::2, :], w["fr"][0]), pw(r[:, 1::2, 1::2, :], w["fr"][1])], -1)))
    for name, k in (("sep3", 3), ("sep5", 5)):
        d1, p1, d2, p2 = w[name]
        y = bn(pw(dw(tf.nn.relu(x), d1, k, stride, 1), p1))
        outs.append(bn(pw(dw(tf.nn.relu(y), d2, k, 1, 1), p2)))
    for name, k in (("dil3", 3), ("dil5", 5)):
        d, p = w[name]
        outs.append(bn(pw(dw(tf.nn.relu(x), d, k, stride, 2), p)))
    return tf.add_n([a[i] * o for i, o in enumerate(outs)])


class Cell:
    def __init__(self, C_pp, C_p, C, reduction, reduction_prev):
        self.C, self.reduction, self.reduction_prev = C, reduction, reduction_prev
        self.pre0 = [var((1, 1, C_pp, C // 2)), var((1, 1, C_pp, C // 2))] if reduction_prev else [var((1, 1, C_pp, C))]
        self.pre1 = var((1, 1, C_p, C))
        # stacked per-edge weights: name -> list of [EDGES, ...] variables
        self.w = {name: [var((EDGES,) + sh) for sh in shapes] for name, shapes in edge_weights(C, reduction).items()}

    def variables(self):
        return self.pre0 + [self.pre1] + [v for vs in self.w.values() for v in vs]

    def edge(self, e):  # static slice of edge e's weights
        return {name: [v[e] for v in vs] for name, vs in self.w.items()}

    def __call__(self, s0, s1, alphas):  # alphas [14, 8] softmaxed, column 0 = none
        if self.reduction_prev:
            r = tf.nn.relu(s0)
            s0 = bn(tf.concat([pw(r[:, ::2, ::2, :], self.pre0[0]), pw(r[:, 1::2, 1::2, :], self.pre0[1])], -1))
        else:
            s0 = bn(pw(tf.nn.relu(s0), self.pre0[0]))
        s1 = bn(pw(tf.nn.relu(s1), self.pre1))
        a = alphas[:, 1:]
        if MODE == "unrolled" or self.reduction:
            states = [s0, s1]
            offset = 0
            for i in range(NODES):
                states.append(tf.add_n([mixed(states[j], self.edge(offset + j), a[offset + j],
                                              2 if self.reduction and j < 2 else 1)
                                        for j in range(i + 2)]))
                offset += i + 2
            return tf.concat(states[2:], -1)
        flat = {name: [tf.convert_to_tensor(v) for v in vs] for name, vs in self.w.items()}
        if ARGS.per_node:   # one loop per node: its edges are independent
            states, offset = [s0, s1], 0
            for i in range(NODES):
                S = tf.stack(states)

                def body(j, acc, S=S, offset=offset):
                    w = {name: [tf.gather(v, offset + j) for v in vs] for name, vs in flat.items()}
                    return j + 1, acc + mixed(tf.gather(S, j), w, tf.gather(a, offset + j), 1)

                _, acc = tf.while_loop(lambda j, acc: j < i + 2, body, (tf.constant(0), tf.zeros_like(s1)),
                                       parallel_iterations=2)
                states.append(acc)
                offset += i + 2
            return tf.concat(states[2:], -1)
        # one loop over the 14 edges; states as a [6, ...] loop variable
        states = tf.stack([s0, s1] + [tf.zeros_like(s1)] * NODES)
        src, dst = tf.constant(SRC), tf.constant(DST)
        flat = {name: [tf.convert_to_tensor(v) for v in vs] for name, vs in self.w.items()}

        def body(e, states):
            x = tf.gather(states, src[e])
            w = {name: [tf.gather(v, e) for v in vs] for name, vs in flat.items()}
            y = mixed(x, w, tf.gather(a, e), 1)
            mask = tf.reshape(tf.one_hot(dst[e] + 2, NODES + 2), [-1, 1, 1, 1, 1])
            return e + 1, states + mask * y[None]

        _, states = tf.while_loop(lambda e, s: e < EDGES, body, (tf.constant(0), states),
                                  parallel_iterations=2)
        return tf.concat(tf.unstack(states[2:]), -1)


class Net:
    def __init__(self, C, layers, classes=10):
        self.stem = var((3, 3, 3, 3 * C))
        C_pp, C_p, C_cur = 3 * C, 3 * C, C
        self.cells, red_prev = [], False
        for i in range(layers):
            red = i in (layers // 3, 2 * layers // 3)
            if red:
                C_cur *= 2
            cell = Cell(C_pp, C_p, C_cur, red, red_prev)
            self.cells.append(cell)
            red_prev = red
            C_pp, C_p = C_p, NODES * C_cur
        self.fc = var((C_p, classes))
        self.alphas = [tf.Variable(1e-3 * rng.normal(size=(EDGES, 8)).astype("float32")) for _ in range(2)]

    def weights(self):
        return [self.stem, self.fc] + [v for c in self.cells for v in c.variables()]

    def __call__(self, x):
        s = bn(tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), self.stem, 1, "VALID"))
        s0 = s1 = s
        an, ar = (tf.nn.softmax(a, -1) for a in self.alphas)
        for cell in self.cells:
            a = ar if cell.reduction else an
            if RECOMPUTE:
                s0, s1 = s1, tf.recompute_grad(lambda s0, s1, a, cell=cell: cell(s0, s1, a))(s0, s1, a)
            else:
                s0, s1 = s1, cell(s0, s1, a)
        return tf.reduce_mean(s1, [1, 2]) @ self.fc


net = Net(C0, LAYERS)
W = net.weights()
print(f"{MODE}{' + recompute' if RECOMPUTE else ''}: {sum(int(np.prod(v.shape)) for v in W):,} weights", flush=True)


def loss(x, y):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, net(x)))


@tf.function(autograph=False)
def step(xt, yt, xv, yv):
    with tf.GradientTape() as t:
        lv = loss(xv, yv)
    ga = t.gradient(lv, net.alphas)
    for v, g in zip(net.alphas, ga):
        v.assign_sub(3e-4 * g)
    with tf.GradientTape() as t:
        lt = loss(xt, yt)
    gw = t.gradient(lt, W)
    for v, g in zip(W, gw):
        if g is not None:
            v.assign_sub(0.025 * g)
    return lt


def batch():
    return (tf.constant(rng.normal(size=(BATCH, 32, 32, 3)).astype("float32")),
            tf.constant(rng.integers(0, 10, BATCH).astype("int32")))


def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20


t0 = time.perf_counter()
float(step(*batch(), *batch()))
first = time.perf_counter() - t0
ops = len(step.get_concrete_function(*batch(), *batch()).graph.get_operations())
print(f"first call {first:.1f} s, graph ops {ops}, rss {rss()} MB", flush=True)
times = []
for _ in range(STEPS):
    b = (*batch(), *batch())
    t0 = time.perf_counter()
    float(step(*b))
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"form": MODE, "recompute": RECOMPUTE, "per_node": ARGS.per_node, "same_padding": ARGS.same_padding, "intra": ARGS.intra, "C": C0, "layers": LAYERS, "batch": BATCH, "s_per_step": round(float(np.median(times)), 3), "first_call_s": round(first, 1),
                  "peak_rss_mb": round(peak), "graph_ops": ops}))
