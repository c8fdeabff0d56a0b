#!/usr/bin/env python3
"""ENAS step speed: the shared child's training step against a fixed network.

Builds ``search.py --method enas``'s method (the shared child, the
controller, REINFORCE) on cifar10-mini and times, after warm-up:

- for each of ``--architectures`` sampled architectures, the child's
  compiled training step (one traced function for all) with that
  architecture against the training step of the evaluation network
  (``NetworkCIFAR``, tfnas's ``Trainer``) of that architecture's cell at the
  same C, layers and batch, the two alternating step by step:
  ``child_over_fixed`` is the mean child step over the mean fixed step (the
  issue's target: <= 1.3), with the ratio per architecture beside it; the
  sampling itself is timed apart;
- one controller update (``samples_per_update`` sampled architectures, each
  rewarded with the child's accuracy on a validation batch, then REINFORCE);
- a derivation of 100 sampled architectures, each scored on a batch;
- the first call (trace) of the child step and of the controller update, and
  the peak RSS.

    python bench/enas_step.py [--init-channels 20 --layers 8 --batch-size 32] [--steps 10]

Last line: {"child_over_fixed", "controller_update_s", "trace_s", "peak_rss_mb", ...}
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

quiet_tensorflow()

from timing import alternating_times, median_seconds  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                    "cifar10-mini")


def _method(args):
    import tensorflow as tf
    from tfnas.data import open_dataset
    from tfnas.search.base import SearchData, method_class
    from tfnas.search.driver import build_method
    from tfnas.search.settings import SearchSettings
    settings = SearchSettings.from_preset("small", method="enas", init_channels=args.init_channels,
                                          layers=args.layers, batch_size=args.batch_size,
                                          dataset=f"folder:{args.data}", space=args.space)
    data = open_dataset(settings.dataset, validation=method_class("enas").validation_size(settings))
    strategy = tf.distribute.get_strategy()
    method = build_method(settings, data.info, strategy)
    method.open_streams(SearchData(data, settings, strategy, range(0, 1000)))
    return method


def _child_trace(method, args):
    """A batch, ``--architectures`` sampled architectures, the child step's
    first call (trace) and the time to sample one architecture."""
    batch = next(iter(method.train_stream.next_pass()))
    archs = [method.sampler.sample()[0] for _ in range(args.architectures)]
    t0 = time.perf_counter()
    method._step_fn(batch, archs[0])[0].numpy()
    trace = time.perf_counter() - t0
    sample = median_seconds(lambda: method.sampler.sample()[0].numpy(), 3, 20)
    return batch, archs, trace, sample


def _fixed_step(method, batch, arch, args):
    """The compiled training step of the evaluation network of ``arch``'s cell
    (same C, layers and batch)."""
    import tensorflow as tf
    from tfnas.networks import NetworkCIFAR
    from tfnas.search.enas_controller import arch_to_genotype
    from tfnas.training import Trainer
    genotype = arch_to_genotype(arch.numpy(), method.space, name="sampled")
    model = NetworkCIFAR(genotype, init_channels=args.init_channels, layers=args.layers, num_classes=10)
    model.build((None, 32, 32, 3))
    trainer = Trainer(model, tf.distribute.get_strategy())
    spec = tuple(tf.TensorSpec(t.shape, t.dtype) for t in batch)
    step = trainer.compiled(spec).train
    step(batch).numpy()
    return lambda: step(batch).numpy()


def _paired_timing(method, batch, archs, args):
    """Median seconds per step of the child with each architecture and of the
    fixed network of that architecture's cell, the two alternating step by
    step so that a change of the host's load hits both alike."""
    steps = {}
    for k, arch in enumerate(archs):
        steps["child", k] = lambda arch=arch: method._step_fn(batch, arch)[0].numpy()
        steps["fixed", k] = _fixed_step(method, batch, arch, args)
    wall, _ = alternating_times(steps, args.warmup, args.steps)
    return tuple([statistics.median(wall[kind, k]) for k in range(len(archs))]
                 for kind in ("child", "fixed"))


def _controller_timing(method):
    t0 = time.perf_counter()
    method.reinforce.update(method.reward_for_bench)
    trace = time.perf_counter() - t0
    update = median_seconds(lambda: method.reinforce.update(method.reward_for_bench), 1, 5)
    t0 = time.perf_counter()
    method.derive()
    derive = time.perf_counter() - t0
    return trace, update, derive


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init-channels", type=int, default=20)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--space", default="enas", choices=("enas", "darts"))
    p.add_argument("--steps", type=int, default=10, help="timed steps per architecture and network")
    p.add_argument("--architectures", type=int, default=3,
                   help="sampled architectures, each timed in the child and as a fixed network")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--data", default=DATA)
    args = p.parse_args()
    configure_threads(None, None)
    import keras
    keras.utils.set_random_seed(0)

    method = _method(args)
    batch, archs, trace, sample = _child_trace(method, args)
    child_s, fixed_s = _paired_timing(method, batch, archs, args)
    child, fixed = statistics.mean(child_s), statistics.mean(fixed_s)
    per_arch = [round(c / f, 3) for c, f in zip(child_s, fixed_s)]
    val = next(iter(method.reward_stream.next_pass()))
    method.reward_for_bench = lambda arch: method.accuracy(val, arch)
    method.config = method.config.__class__(**{**method.config.to_dict(), "derive_samples": 100})
    method.derive_passes = -(-100 // method.reward_stream.batches_per_pass)
    controller_trace, update, derive = _controller_timing(method)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"child step: {1000 * child:.0f} ms (sampling an architecture: {1000 * sample:.0f} ms; "
          f"first call {trace:.1f} s)")
    print(f"fixed networks of the same cells: {1000 * fixed:.0f} ms (mean over {len(archs)} architectures)")
    print(f"child / fixed: {child / fixed:.2f} (target <= 1.3); per architecture: {per_arch}")
    print(f"controller update ({method.config.samples_per_update} samples + REINFORCE): {update:.2f} s "
          f"(first {controller_trace:.1f} s); derivation of 100 samples: {derive:.1f} s")
    print(f"peak RSS {peak:.0f} MB; load {os.getloadavg()[0]:.2f}")
    print(json.dumps({"child_over_fixed": round(child / fixed, 3), "child_ms": round(1000 * child, 1),
                      "fixed_ms": round(1000 * fixed, 1), "child_over_fixed_per_architecture": per_arch,
                      "sample_ms": round(1000 * sample, 1),
                      "controller_update_s": round(update, 3), "derive_100_s": round(derive, 2),
                      "trace_s": round(trace, 1), "controller_trace_s": round(controller_trace, 1),
                      "peak_rss_mb": round(peak), "loadavg": round(os.getloadavg()[0], 2),
                      "init_channels": args.init_channels, "layers": args.layers,
                      "batch_size": args.batch_size, "space": args.space}))


if __name__ == "__main__":
    main()
