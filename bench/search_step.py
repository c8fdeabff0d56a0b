#!/usr/bin/env python3
"""Seconds per DARTS search step (alpha step + weight step), trace time and
peak memory: search network C=16, 8 layers, batch 16, 32×32 inputs.

Each mode runs in its own process (peak RSS is per process):
``order1`` (first order), ``order2_fd`` (reference finite differences),
``order2_exact`` (differentiating through the virtual step; differentiable BN).
Reference PyTorch on this machine type: 5.0–7.45 s first order, 15.65 s
second order (fd), peak 2.7–3.5 GB.

    python bench/search_step.py [--steps 3] [--modes order1,order2_fd,order2_exact] [--torch-python PY]
    python bench/search_step.py --low-memory --modes order1,order2_fd

``--low-memory`` measures ``SearchNetwork(low_memory=True)`` (search.py
``--low-memory``: each cell's edges in loops over stacked per-edge
variables, activations recomputed); it does not apply to ``order2_exact``.
Like search.py, each mode caps glibc's malloc arenas at one per inter-op
thread (``--malloc-arenas N`` caps them at N, ``0`` keeps glibc's default,
for comparison) and lightens the graph optimiser on a CPU
(``tfnas.runtime.configure_graph_optimizer``; ``--default-grappler`` keeps
TensorFlow's settings, for comparison).

With ``--torch-python PY`` (an interpreter that has PyTorch; not a tfnas
dependency) the PyTorch reference (bench/reference_torch.py) is re-timed in
the same run for first order and second order (fd), with its peak RSS, and
the ratios measured here are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODES = {"order1": (1, "fd"), "order2_fd": (2, "fd"), "order2_exact": (2, "exact")}


def run_mode(mode, steps, C, layers, batch, inter=None, low_memory=False, malloc_arenas=None,
             light_grappler=True):
    from tfnas.runtime import (configure_graph_optimizer, configure_threads, inter_op_threads,
                               limit_malloc_arenas, quiet_tensorflow)
    quiet_tensorflow()
    if malloc_arenas is None:
        malloc_arenas = inter_op_threads(inter)  # one per inter-op thread, as search.py
    arenas_capped = limit_malloc_arenas(malloc_arenas) if malloc_arenas else False
    import numpy as np
    import tensorflow as tf
    configure_threads(1, inter_op_threads(inter))  # as search.py unless --inter
    if light_grappler:  # as search.py
        configure_graph_optimizer()
    from tfnas.search.darts import BilevelSearch, DartsConfig
    from tfnas.search.supernet import SearchNetwork

    order, hessian = MODES[mode]
    t0 = time.perf_counter()
    model = SearchNetwork(C, layers, 10, bn_fused=False if hessian == "exact" else None,
                          low_memory=low_memory)
    model.build_for((32, 32, 3))
    search = BilevelSearch(model, DartsConfig(order=order, hessian=hessian))
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)

    def batch_pair():
        x = rng.normal(size=(2, batch, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, size=(2, batch)).astype("int32")
        return (tf.constant(x[0]), tf.constant(y[0])), (tf.constant(x[1]), tf.constant(y[1]))

    t0 = time.perf_counter()
    float(search.search_step(*batch_pair())["loss"])
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        pair = batch_pair()
        t0 = time.perf_counter()
        float(search.search_step(*pair)["loss"])
        times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step_s = float(np.median(times))
    return {"mode": mode, "s_per_step": step_s, "steps": times, "build_s": build_s,
            "first_call_s": first_s, "trace_s": first_s - step_s, "peak_rss_mb": peak_mb,
            "inter_op_threads": inter_op_threads(inter), "low_memory": low_memory,
            "grappler": "light" if light_grappler else "default",
            "malloc_arenas": (malloc_arenas if arenas_capped
                              else os.environ.get("MALLOC_ARENA_MAX", "glibc default")),
            "loadavg": os.getloadavg()[0]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--modes", default="order1,order2_fd,order2_exact")
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--inter", type=int, default=None,
                        help="inter-op threads (default: what search.py uses)")
    parser.add_argument("--torch-python", default=None,
                        help="python with torch: also time the PyTorch reference in this run")
    parser.add_argument("--low-memory", action="store_true",
                        help="the low-memory search network (search.py --low-memory)")
    parser.add_argument("--malloc-arenas", type=int, default=None,
                        help="cap glibc malloc arenas at N (default: as search.py, one per inter-op "
                             "thread; 0: glibc's default)")
    parser.add_argument("--default-grappler", action="store_true",
                        help="TensorFlow's own graph-optimiser settings (two rounds, memory and layout "
                             "optimisers) instead of search.py's lighter ones")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.low_memory and "order2_exact" in (args.one or args.modes).split(","):
        parser.error("--low-memory does not apply to order2_exact (first derivatives only)")
    if args.one:
        print(json.dumps(run_mode(args.one, args.steps, args.C, args.layers, args.batch, args.inter,
                                  args.low_memory, args.malloc_arenas, not args.default_grappler)))
        return 0
    results = {}
    for mode in args.modes.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--one", mode, "--steps", str(args.steps),
               "--C", str(args.C), "--layers", str(args.layers), "--batch", str(args.batch)]
        if args.inter:
            cmd += ["--inter", str(args.inter)]
        if args.low_memory:
            cmd += ["--low-memory"]
        if args.malloc_arenas is not None:
            cmd += ["--malloc-arenas", str(args.malloc_arenas)]
        if args.default_grappler:
            cmd += ["--default-grappler"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"mode {mode} failed")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        results[mode] = res
        print(f"{mode:13s} {res['s_per_step']:.2f} s/step  trace {res['trace_s']:.0f} s  "
              f"build {res['build_s']:.0f} s  peak {res['peak_rss_mb']:.0f} MB  "
              f"load {res['loadavg']:.1f}", flush=True)
    if "order1" in results:
        for mode in ("order2_fd", "order2_exact"):
            if mode in results:
                print(f"{mode} / order1 = {results[mode]['s_per_step'] / results['order1']['s_per_step']:.2f}")
    reference = {}
    if args.torch_python:
        from train_step import run_reference
        for mode, order in (("order1", 1), ("order2_fd", 2)):
            if mode not in results:
                continue
            ref = run_reference(args.torch_python, "search", "--order", str(order),
                                "--batch-size", str(args.batch), "--init-channels", str(args.C),
                                "--layers", str(args.layers), "--steps", str(args.steps))
            reference[mode] = ref
            print(f"PyTorch reference {mode}: {ref['s_per_step']:.2f} s/step, peak {ref['peak_rss_mb']} MB; "
                  f"tfnas {ref['s_per_step'] / results[mode]['s_per_step']:.2f}x faster, "
                  f"{results[mode]['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x its memory", flush=True)
    summary = {f"{m}_s_per_step": r["s_per_step"] for m, r in results.items()}
    for mode, ref in reference.items():
        summary[f"reference_{mode}_s_per_step"] = ref["s_per_step"]
        summary[f"reference_{mode}_peak_rss_mb"] = ref["peak_rss_mb"]
        summary[f"speedup_vs_reference_{mode}"] = round(ref["s_per_step"] / results[mode]["s_per_step"], 2)
        summary[f"memory_vs_reference_{mode}"] = round(results[mode]["peak_rss_mb"] / ref["peak_rss_mb"], 2)
    summary.update({
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results.values()),
        "peak_rss_mb_per_mode": {m: r["peak_rss_mb"] for m, r in results.items()},
        "trace_s": max(r["trace_s"] for r in results.values()),
        "trace_s_per_mode": {m: r["trace_s"] for m, r in results.items()},
        "config": {"C": args.C, "layers": args.layers, "batch": args.batch, "steps": args.steps,
                   "low_memory": args.low_memory,
                   "malloc_arenas": next(iter(results.values()))["malloc_arenas"]},
        "loadavg": os.getloadavg()[0],
    })
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
