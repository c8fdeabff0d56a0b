#!/usr/bin/env python3
"""Where the training step's time goes, and how close it runs to the CPU's
arithmetic limit.

Profiles the compiled train step of ``tfnas.training.Trainer`` (the network
and batch of bench/train_step.py: DARTS_V2, C=16, 8 layers, batch 32, no
auxiliary head, drop path 0) with TensorFlow's profiler and reports:

* the step's floating-point work, counted from the traced graph (static
  shapes): multiply-adds of the 1×1 convolutions (MatMul), the depthwise
  and dense convolutions, forward and backward, counted as 2 FLOP each;
* this machine's limit: the FLOP/s of one large float32 matrix product on
  one thread and on all threads, timed in the same run;
* the step's op time summed per category (thread-milliseconds per step over
  TensorFlow's inter-op threads) and the FLOP/s each arithmetic category
  reaches while it runs; ``executor`` is the threads' busy time outside any
  op (scheduling, allocation, hand-offs).

    python bench/step_profile.py [--steps 5] [--intra 1 --inter 2]

Last line: one JSON object (``step_ms``, ``gflop_per_step``,
``gflop_per_s``, ``peak_gflop_per_s``, ``share_of_peak``, ``categories``).
"""

import argparse
import collections
import glob
import json
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfnas.runtime import configure_threads, quiet_tensorflow  # noqa: E402
from train_step import add_network_arguments, build_trainer  # noqa: E402  (bench/train_step.py)

quiet_tensorflow()

# op type -> category; what is not listed is "other" (element-wise, copies of scalars...)
CATEGORIES = {
    "depthwise conv": ("DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                       "DepthwiseConv2dNativeBackpropFilter"),
    "1x1 conv (MatMul)": ("MatMul", "FusedMatMul", "BatchMatMulV2"),
    "dense conv": ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "FusedConv2D"),
    "batch norm": ("FusedBatchNormV3", "FusedBatchNormGradV3", "FusedBatchNormEx"),
    "relu": ("Relu", "ReluGrad"),
    "pooling": ("MaxPool", "MaxPoolGrad", "AvgPool", "AvgPoolGrad"),
    "layout and copies": ("Pad", "Transpose", "ConcatV2", "Slice", "StridedSlice", "Split",
                          "SpaceToDepth", "DepthToSpace", "SpaceToBatchND", "BatchToSpaceND",
                          "Reshape", "Identity", "StridedSliceGrad", "Tile", "Pack", "Unpack"),
    "optimizer and clip": ("ResourceApplyMomentum", "ResourceApplyKerasMomentum", "L2Loss",
                           "AssignVariableOp", "ReadVariableOp", "AssignAddVariableOp"),
}
CATEGORY_OF = {op: cat for cat, ops in CATEGORIES.items() for op in ops}


CONVOLUTIONS = ("DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                "DepthwiseConv2dNativeBackpropFilter", "Conv2D", "Conv2DBackpropInput",
                "Conv2DBackpropFilter")


def op_flops(op) -> int:
    """FLOPs (2 per multiply-add) of one graph op with static shapes; 0 for
    ops that are not convolutions or matrix products."""
    t = op.type
    try:
        if t in ("MatMul", "BatchMatMulV2"):
            a = op.inputs[0].shape
            k = a[-2] if (t == "MatMul" and op.get_attr("transpose_a")) else a[-1]
            return 2 * math.prod(op.outputs[0].shape) * int(k)
        if t in CONVOLUTIONS:
            # a gradient does the forward's work: per output-gradient element
            out = op.inputs[2].shape if "Backprop" in t else op.outputs[0].shape
            kernel = op.outputs[0].shape if t.endswith("BackpropFilter") else op.inputs[1].shape
            per_output = kernel[0] * kernel[1] * (1 if t.startswith("Depthwise") else kernel[2])
            return 2 * math.prod(out) * int(per_output)
    except (TypeError, ValueError):  # an unknown dimension
        return 0
    return 0


def graph_flops(graph) -> dict:
    """FLOPs per category over the ops of ``graph``."""
    totals = collections.Counter()
    for op in graph.get_operations():
        flops = op_flops(op)
        if flops:
            totals[CATEGORY_OF.get(op.type, "other")] += flops
    return totals


def matmul_peak(threads: int, size: int = 1536, repeats: int = 5) -> float:
    """FLOP/s of a float32 ``size``³ matrix product, in a subprocess with
    ``threads`` intra-op threads (the pools are per process)."""
    import subprocess
    code = (
        "import time, tensorflow as tf\n"
        f"tf.config.threading.set_intra_op_parallelism_threads({threads})\n"
        f"a = tf.random.normal(({size}, {size}))\n"
        "f = tf.function(lambda a: tf.reduce_sum(tf.matmul(a, a)))\n"
        "f(a).numpy(); best = 1e9\n"
        f"for _ in range({repeats}):\n"
        "    t = time.perf_counter(); f(a).numpy(); best = min(best, time.perf_counter() - t)\n"
        f"print(2 * {size} ** 3 / best)\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def profile_op_times(run, steps: int) -> tuple:
    """``(ms per op type per step, busy ms per step)`` over TensorFlow's
    inter-op threads, from a profile of ``steps`` calls of ``run``."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="tfnas-profile-")
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        run()
    tf.profiler.experimental.stop()
    path = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    per_type, busy_ps = collections.Counter(), 0
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name == "ExecutorState::Process":
                    busy_ps += event.duration_ps
                elif ":" in name and "::" not in name:
                    per_type[op_type_of(name)] += event.duration_ps
    to_ms = 1e-9 / steps
    return {k: v * to_ms for k, v in per_type.items()}, busy_ps * to_ms


def op_type_of(event_name: str) -> str:
    """``"scope/op:_MklNativeFusedBatchNormV3"`` -> ``"FusedBatchNormV3"``: the
    op type without oneDNN's prefix or the leading underscore of TensorFlow's
    fused ops (``_FusedMatMul`` -> ``FusedMatMul``)."""
    op_type = event_name.rsplit(":", 1)[1]
    for prefix in ("_MklNative", "_Mkl"):
        if op_type.startswith(prefix):
            return op_type[len(prefix):]
    return op_type.lstrip("_")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_network_arguments(p)
    p.add_argument("--steps", type=int, default=5, help="profiled steps (after timing)")
    p.add_argument("--timed", type=int, default=10, help="timed steps, without the profiler")
    args = p.parse_args()

    threads = args.intra or os.cpu_count() or 1
    peak_one, peak_all = matmul_peak(1), matmul_peak(threads)
    configure_threads(args.intra, args.inter)
    import tensorflow as tf

    model, trainer, batch, _ = build_trainer(args)
    spec = tuple(tf.TensorSpec(t.shape, t.dtype) for t in batch)  # static shapes: FLOPs countable
    step = trainer.compiled(spec).train
    flops = graph_flops(step.get_concrete_function().graph)
    total_flops = sum(flops.values())

    def run():
        step(batch).numpy()
    for _ in range(3):
        run()
    times = []
    for _ in range(args.timed):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    step_ms = 1000 * statistics.median(times)
    type_ms, busy_ms = profile_op_times(run, args.steps)
    op_ms = collections.Counter()
    for op_type, ms in type_ms.items():
        op_ms[CATEGORY_OF.get(op_type, "other")] += ms
    op_ms["executor"] = max(0.0, busy_ms - sum(type_ms.values()))

    print(f"step {step_ms:.1f} ms (median of {args.timed}); {total_flops / 1e9:.2f} GFLOP per step "
          f"-> {total_flops / step_ms / 1e6:.1f} GFLOP/s")
    print(f"limit: one {1536}^3 float32 matmul {peak_one / 1e9:.1f} GFLOP/s on one thread, "
          f"{peak_all / 1e9:.1f} on {threads}: the step runs at "
          f"{total_flops / step_ms / 1e6 / (peak_all / 1e9):.0%} of it")
    print(f"{'category':22s} {'thread-ms':>9s} {'share':>6s} {'GFLOP':>7s} {'GFLOP/s while running':>22s}")
    categories = {}
    for cat, ms in sorted(op_ms.items(), key=lambda kv: -kv[1]):
        gflop = flops.get(cat, 0) / 1e9
        rate = gflop / ms * 1e3 if gflop and ms else None
        categories[cat] = {"thread_ms": round(ms, 1), "share": round(ms / busy_ms, 3),
                           "gflop": round(gflop, 3), "gflop_per_s": None if rate is None else round(rate, 1)}
        print(f"{cat:22s} {ms:9.1f} {ms / busy_ms:6.1%} {gflop:7.2f} "
              f"{'' if rate is None else f'{rate:.1f}':>22s}")
    print(f"{'busy (all threads)':22s} {busy_ms:9.1f}")
    top = sorted(type_ms.items(), key=lambda kv: -kv[1])[:15]
    print("op types, thread-ms per step: " + ", ".join(f"{t} {ms:.1f}" for t, ms in top))
    print(json.dumps({
        "step_ms": round(step_ms, 1), "gflop_per_step": round(total_flops / 1e9, 3),
        "gflop_per_s": round(total_flops / step_ms / 1e6, 1),
        "peak_gflop_per_s_one_thread": round(peak_one / 1e9, 1),
        "peak_gflop_per_s": round(peak_all / 1e9, 1), "threads": threads,
        "share_of_peak": round(total_flops / step_ms / 1e6 / (peak_all / 1e9), 3),
        "busy_thread_ms_per_step": round(busy_ms, 1), "categories": categories,
        "op_types_thread_ms": {t: round(ms, 1) for t, ms in top},
        "batch_size": args.batch_size, "genotype": args.genotype, "init_channels": args.init_channels,
        "layers": args.layers, "loadavg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
