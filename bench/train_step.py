#!/usr/bin/env python3
"""Training-step speed: DARTS_V2, C=16, 8 layers, batch 32, 32x32, no aux.

Times the compiled train step of ``tfnas.training.Trainer`` (forward,
backward, torch-style clip, reference SGD) on a fixed batch of real
cifar10-mini images, after warm-up, with drop path 0 and 0.2 (the same
compiled function: drop path is a variable), the two settings alternating
in rounds so that a drift of the host's speed favours neither.  Reports the
trace (first-step) time, the peak RSS and ``drop_path_over_plain``.

    python bench/train_step.py [--steps 30] [--intra 1 --inter 2] [--torch-python PY]

With ``--torch-python PY`` (an interpreter that has PyTorch; not a tfnas
dependency) the PyTorch reference (bench/reference_torch.py) is re-timed in
the same run and ``speedup_vs_reference`` is the ratio measured here.

Last line: {"ms_per_step", "images_per_s", "ms_per_step_drop_path",
"drop_path_over_plain", "trace_s",
"peak_rss_mb", "cpu_ms_per_step", "loadavg", ...}
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfnas.runtime import configure_threads, quiet_tensorflow  # noqa: E402
from timing import alternating_times  # noqa: E402  (bench/timing.py)

quiet_tensorflow()

REFERENCE_MS = 332.0
REFERENCE_MS_DROP_PATH = 349.0


def add_network_arguments(p):
    """The options that choose the network and the batch (shared with
    bench/step_profile.py)."""
    p.add_argument("--genotype", default="DARTS_V2")
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--intra", type=int, default=None, help="intra-op threads (default: TF's)")
    p.add_argument("--inter", type=int, default=None, help="inter-op threads (default: TF's)")
    p.add_argument("--data", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                  "..", "shared", "data", "cifar10-mini"))


def build_trainer(args):
    """``(model, trainer, batch, source)``: NetworkCIFAR of ``args.genotype``
    without auxiliary head, its Trainer, and one augmented batch of
    cifar10-mini (random images if the data is not at hand)."""
    import keras
    import tensorflow as tf
    from tfnas import data as data_lib
    from tfnas.networks import NetworkCIFAR
    from tfnas.training import Trainer

    keras.utils.set_random_seed(0)
    if os.path.isdir(os.path.join(args.data, "train")):
        images = data_lib.open_dataset(f"folder:{args.data}")
        batch = next(iter(images.dataset("train", args.batch_size, augment=True, seed=0, epoch=0)))
        source = "cifar10-mini"
    else:  # no data at hand: random images time the same
        batch = (tf.random.normal((args.batch_size, 32, 32, 3)),
                 tf.random.uniform((args.batch_size,), 0, 10, tf.int32))
        source = "random"
    model = NetworkCIFAR(args.genotype, init_channels=args.init_channels, layers=args.layers,
                         num_classes=10, auxiliary=False)
    model.build((None, 32, 32, 3))
    trainer = Trainer(model, tf.distribute.get_strategy())
    return model, trainer, batch, source


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_network_arguments(p)
    p.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--torch-python", default=None,
                   help="python with torch: also time the PyTorch reference in this run")
    args = p.parse_args()

    configure_threads(args.intra, args.inter)
    import tensorflow as tf
    from tfnas.networks import count_parameters

    model, trainer, batch, source = build_trainer(args)
    spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32), tf.TensorSpec((None,), tf.int32))
    step = trainer.compiled(spec).train

    t0 = time.perf_counter()
    step(batch).numpy()
    trace_s = time.perf_counter() - t0

    def at(drop_path):
        def run():  # the assignment (a scalar variable) is negligible beside the step
            model.drop_path_prob.assign(drop_path)
            step(batch).numpy()
        return run

    # the two settings take turns in 3 rounds: a drift of the host favours neither
    wall, cpu = alternating_times({p: at(p) for p in (0.0, 0.2)}, args.warmup, 3, max(1, args.steps // 3))
    timings = {p: (1000 * statistics.median(wall[p]), 1000 * min(wall[p]), 1000 * statistics.median(cpu[p]))
               for p in wall}
    (ms, ms_min, cpu_ms), (ms_dp, ms_dp_min, _) = timings[0.0], timings[0.2]
    assert trainer.trace_counts["train"] == 1, trainer.trace_counts
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "ms_per_step": round(ms, 1), "images_per_s": round(1000 * args.batch_size / ms, 1),
        "ms_per_step_min": round(ms_min, 1),
        # process CPU time per step: less sensitive to other processes than wall time
        "cpu_ms_per_step": round(cpu_ms, 1),
        "ms_per_step_drop_path": round(ms_dp, 1), "ms_per_step_drop_path_min": round(ms_dp_min, 1),
        # issue 22's target: <= 1.10 (the reference's drop path costs nothing)
        "drop_path_over_plain": round(ms_dp / ms, 3),
        "speedup_vs_issue_figure": round(REFERENCE_MS / ms, 2),
        "speedup_vs_issue_figure_drop_path": round(REFERENCE_MS_DROP_PATH / ms_dp, 2),
        "trace_s": round(trace_s, 1), "peak_rss_mb": round(peak_rss_mb),
        "params": count_parameters(model), "batch_size": args.batch_size, "genotype": args.genotype,
        "init_channels": args.init_channels, "layers": args.layers, "data": source,
        "threads": {"intra": args.intra, "inter": args.inter},
        "loadavg": os.getloadavg()[0],
    }
    if args.torch_python:
        reference = run_reference(args.torch_python, "train", "--batch-size", str(args.batch_size),
                                  "--init-channels", str(args.init_channels), "--layers", str(args.layers),
                                  "--steps", str(max(5, args.steps // 2)))
        result.update(reference_ms_per_step=reference["ms_per_step"],
                      reference_ms_per_step_drop_path=reference["ms_per_step_drop_path"],
                      reference_torch=reference["torch"],
                      speedup_vs_reference=round(reference["ms_per_step"] / ms, 2),
                      speedup_vs_reference_drop_path=round(reference["ms_per_step_drop_path"] / ms_dp, 2))
        print(f"PyTorch reference in this run: {reference['ms_per_step']:.1f} ms/step "
              f"({reference['ms_per_step_drop_path']:.1f} with drop path); tfnas is "
              f"{result['speedup_vs_reference']:.2f}x ({result['speedup_vs_reference_drop_path']:.2f}x) faster")
        result["loadavg"] = os.getloadavg()[0]
    print(f"{args.genotype} C={args.init_channels} {args.layers} layers batch {args.batch_size}: "
          f"{ms:.1f} ms/step (min {ms_min:.1f}), {result['images_per_s']} images/s; "
          f"drop path 0.2: {ms_dp:.1f} ms/step ({ms_dp / ms:.2f}x); trace {trace_s:.1f} s; peak RSS {peak_rss_mb:.0f} MB; "
          f"{REFERENCE_MS / ms:.2f}x the speed of the issue's 332 ms PyTorch figure (load {result['loadavg']:.2f})")
    print(json.dumps(result))


def run_reference(python, *args):
    """Run bench/reference_torch.py with ``python``; its last JSON line."""
    import subprocess
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_torch.py")
    out = subprocess.run([python, script, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the PyTorch reference failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
