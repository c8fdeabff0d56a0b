"""Float32 vs float64 gradients of tfnas layers and of NetworkCIFAR, per
BatchNorm path, and the speed of a forward+backward step.

    python bench/layer_precision.py [--seeds 6] [--steps 5] [--no-speed]

1. Per operation (training mode, one random input): relative error
   ||g32 - g64|| / ||g64|| of the gradients wrt input and weights, weights
   copied from the float64 layer.
2. NetworkCIFAR (DARTS_V2, C=8, 5 layers, batch 16) over several weight
   seeds, fused and differentiable BN: the same error over all trainable
   parameters.  It is bimodal: ~2e-6 when the float32 and float64 forward
   passes take the same side of every ReLU / max-pool kink, 1e-4..1e-2 when
   rounding puts an activation on the other side of a kink (the float64
   gradient is then that of a different linear piece).  The bench counts the
   ReLU inputs whose sign and the max-pool windows whose argmax differ
   between the two passes ("kink flips"); the "smooth
   control" (ReLU -> softplus, ENAS genotype, which has no max pool) removes
   the kinks altogether.
3. Second derivatives of the fused BN in float32 vs exact float64.
4. ms per forward+backward step, DARTS_V2 C=16, 8 layers, batch 32, 32x32,
   1 intra-op / 2 inter-op threads, per BN path (wall and process CPU time).

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tfnas.runtime import configure_threads, quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

configure_threads(1, 2)

from tfnas import ops  # noqa: E402
from tfnas.resolve import get_genotype  # noqa: E402
from tfnas.networks import NetworkCIFAR  # noqa: E402


def relative_error(g32, g64):
    a = np.concatenate([np.ravel(t) for t in g32]).astype(np.float64)
    b = np.concatenate([np.ravel(t) for t in g64])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def copy_weights(src, dst):
    for a, b in zip(src.weights, dst.weights):
        b.assign(np.asarray(a.numpy(), dtype=b.dtype))


# -- 1. operations -------------------------------------------------------------

def layer_gradients(layer, x, w, dtype):
    x, w = tf.constant(x, dtype), tf.constant(w, dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(layer(x, training=True)) * w)
    return [g.numpy() for g in tape.gradient(loss, [x] + layer.trainable_weights)]


def operation_errors(rng):
    makers = {
        "bn_fused": lambda d: ops.BatchNorm(fused=(d == "float32") or None, dtype=d),
        "bn_differentiable": lambda d: ops.BatchNorm(fused=False, dtype=d),
        "keras_batch_normalization": lambda d: keras.layers.BatchNormalization(epsilon=1e-5, dtype=d),
        "pointwise_matmul": lambda d: ops.PointwiseConv2D(16, dtype=d),
        "depthwise_3x3": lambda d: keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, dtype=d),
    }
    for name in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "max_pool_3x3",
                 "avg_pool_3x3", "skip_connect", "conv_7x1_1x7"):
        for stride in (1, 2):
            makers[f"{name}/s{stride}"] = lambda d, n=name, s=stride: ops.make_operation(n, 16, s, dtype=d)
    errors = {}
    for label, make in makers.items():
        x = rng.normal(size=(8, 16, 16, 16))
        l64, l32 = make("float64"), make("float32")
        y = l64(tf.constant(x), training=True)
        l32(tf.constant(x, tf.float32), training=True)
        copy_weights(l64, l32)
        w = rng.normal(size=y.shape)
        errors[label] = relative_error(layer_gradients(l32, x, w, tf.float32),
                                       layer_gradients(l64, x, w, tf.float64))
    return errors


# -- 2. networks -----------------------------------------------------------------

def network_gradients(model, x, y, dtype):
    """Gradients of the mean cross-entropy, plus the branch taken at every
    kink of the forward pass (recorded eagerly): the sign of each ReLU input
    and the argmax of each max-pool window."""
    branches = []
    relu, max_pool = tf.nn.relu, tf.nn.max_pool2d

    def recording_relu(t, name=None):
        branches.append(t.numpy() > 0)
        return relu(t, name=name)

    def recording_max_pool(t, ksize, strides, padding, name=None):
        _, argmax = tf.nn.max_pool_with_argmax(t, ksize, strides, padding, include_batch_in_index=True)
        branches.append(argmax.numpy())
        return max_pool(t, ksize, strides, padding, name=name)

    # tfnas layers look tf.nn.relu / tf.nn.max_pool2d up at call time
    tf.nn.relu, tf.nn.max_pool2d = recording_relu, recording_max_pool
    try:
        with tf.GradientTape() as tape:
            logits = model(tf.constant(x, dtype), training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    finally:
        tf.nn.relu, tf.nn.max_pool2d = relu, max_pool
    return [g.numpy() for g in tape.gradient(loss, model.trainable_weights)], branches


def network_errors(genotype, seeds, smooth=False, channels=8, layers=5, batch=16):
    """Per BN path: relative gradient errors and kink flips (ReLU inputs of
    the other sign, max-pool windows with another argmax) per seed."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(batch, 32, 32, 3)), rng.integers(0, 10, batch)
    relu = tf.nn.relu
    if smooth:
        tf.nn.relu = tf.nn.softplus
    try:
        errors = {"fused": [], "differentiable": []}
        flips = {"fused": [], "differentiable": []}
        for seed in range(seeds):
            keras.utils.set_random_seed(seed)
            m64 = NetworkCIFAR(genotype, channels, layers, dtype="float64")
            m64.build(x.shape)
            m32 = NetworkCIFAR(genotype, channels, layers)
            m32.build(x.shape)
            copy_weights(m64, m32)
            g64, s64 = network_gradients(m64, x, y, tf.float64)
            for path, fused in (("differentiable", False), ("fused", None)):
                ops.set_batch_norm_fused(m32, fused)
                g32, s32 = network_gradients(m32, x, y, tf.float32)
                errors[path].append(relative_error(g32, g64))
                flips[path].append(int(sum((a != b).sum() for a, b in zip(s32, s64))))
    finally:
        tf.nn.relu = relu
    return errors, flips


def summarize(values):
    return {"median": statistics.median(values), "max": max(values), "min": min(values)}


# -- 3. second derivatives --------------------------------------------------------

def fused_hvp_error(rng):
    shape = (4, 3, 3, 5)
    x, w, vx = (rng.normal(size=shape) for _ in range(3))
    vg, gamma = rng.normal(size=5), rng.uniform(0.5, 2, 5)
    out = []
    for fused, dtype in ((True, "float32"), (False, "float64")):
        bn = ops.BatchNorm(fused=fused, dtype=dtype)
        bn.build(shape)
        bn.gamma.assign(gamma)
        c = lambda a: tf.constant(a, dtype)  # noqa: E731
        xx = c(2 * x + 1)
        with tf.GradientTape() as outer:
            outer.watch(xx)
            with tf.GradientTape() as inner:
                inner.watch(xx)
                loss = tf.reduce_sum(tf.sin(bn(xx, training=True)) * c(w))
            gx, gg = inner.gradient(loss, [xx, bn.gamma])
            dot = tf.reduce_sum(gx * c(vx)) + tf.reduce_sum(gg * c(vg))
        out.append([t.numpy() for t in outer.gradient(dot, [xx, bn.gamma])])
    return relative_error(*out)


# -- 4. speed ------------------------------------------------------------------------

def step_time(fused, steps, drop_path=False):
    model = NetworkCIFAR(get_genotype("DARTS_V2"), 16, 8, 10, drop_path=drop_path)
    ops.set_batch_norm_fused(model, fused)
    model.build((32, 32, 32, 3))
    if drop_path:
        model.drop_path_prob.assign(0.2)
    x = tf.random.normal([32, 32, 32, 3])
    y = tf.random.uniform([32], 0, 10, tf.int32)
    variables = model.trainable_variables

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits, _ = model.call_with_aux(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, variables)
        return loss, tf.linalg.global_norm(grads)

    for _ in range(3):
        step(x, y)[0].numpy()
    walls, cpus = [], []
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            out = step(x, y)
        out[0].numpy()
        walls.append((time.perf_counter() - wall) / steps * 1000)
        cpus.append((time.process_time() - cpu) / steps * 1000)
    return {"wall_ms_min": min(walls), "wall_ms_median": statistics.median(walls),
            "cpu_ms_median": statistics.median(cpus)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=6, help="weight seeds per network (default 6)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat (default 5)")
    parser.add_argument("--no-speed", action="store_true", help="skip the step timing")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    result = {}

    print("== per operation: float32 vs float64 gradient, relative error (training mode)")
    op_errors = operation_errors(rng)
    for label, err in op_errors.items():
        print(f"  {label:28s} {err:.1e}")
    result["op_max_rel_err"] = max(op_errors.values())

    darts = get_genotype("DARTS_V2")
    print(f"\n== NetworkCIFAR DARTS_V2 C=8, 5 layers, batch 16, {args.seeds} weight seeds")
    net, flips = network_errors(darts, args.seeds)
    for path, values in net.items():
        s = summarize(values)
        print(f"  {path:15s} median {s['median']:.1e}  min {s['min']:.1e}  max {s['max']:.1e}  "
              f"seeds without kink flips {sum(f == 0 for f in flips[path])}/{len(values)}")
        print(f"  {'':15s} per seed (error / kink flips vs float64: ReLU signs + max-pool argmaxes): "
              + "  ".join(f"{v:.0e}/{f}" for v, f in zip(values, flips[path])))
        result[f"net_kink_flips_{path}_mean"] = float(np.mean(flips[path]))
        flipless = [v for v, f in zip(values, flips[path]) if f == 0]
        if flipless:
            result[f"net_rel_err_{path}_no_flip_max"] = max(flipless)
        result[f"net_rel_err_{path}_median"] = s["median"]
        result[f"net_rel_err_{path}_min"] = s["min"]
        result[f"net_seeds_without_flips_{path}"] = sum(f == 0 for f in flips[path])

    print(f"\n== smooth control: ENAS (no max pool), ReLU -> softplus, {args.seeds} seeds")
    smooth, _ = network_errors(get_genotype("ENAS"), args.seeds, smooth=True)
    for path, values in smooth.items():
        print(f"  {path:15s} max {max(values):.1e}  median {statistics.median(values):.1e}")
        result[f"smooth_rel_err_{path}_max"] = max(values)

    hvp = fused_hvp_error(rng)
    print(f"\n== fused BN second derivatives (float32 HVP vs exact float64): rel err {hvp:.1e}")
    result["bn_fused_hvp_rel_err"] = hvp

    if not args.no_speed:
        print("\n== forward+backward step, DARTS_V2 C=16, 8 layers, batch 32 (1 intra / 2 inter threads)")
        for label, fused, drop in (("fused", None, False), ("differentiable", False, False),
                                   ("fused_drop_path", None, True)):
            t = step_time(fused, args.steps, drop_path=drop)
            print(f"  {label:18s} wall min {t['wall_ms_min']:.0f} ms  median {t['wall_ms_median']:.0f} ms  "
                  f"cpu {t['cpu_ms_median']:.0f} ms   (loadavg {os.getloadavg()[0]:.1f})")
            result[f"step_ms_{label}"] = t["wall_ms_min"]
            result[f"step_cpu_ms_{label}"] = t["cpu_ms_median"]
    result["loadavg"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
