#!/usr/bin/env python3
"""Input-pipeline speed: the tf.data training pipeline alone vs the training step.

Iterates ``tfnas.data`` train pipelines over cifar10-mini (decode once and
cache, per-batch gather, pad-4 crop, flip, normalise, cutout 16, prefetch)
and reports images/s; then (unless ``--no-step``) measures the images/s the
training step of the ``small`` preset consumes (DARTS_V2, C=16, 8 layers,
batch 64) in the same process, and their ratio.  Acceptance: ratio >= 10.

    python bench/input_pipeline.py [--epochs 3] [--no-step]

Last line: {"pipeline_images_per_s", "step_images_per_s", "ratio", "loadavg", ...}
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfnas.runtime import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-mini"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cutout", type=int, default=16)
    p.add_argument("--no-step", action="store_true", help="skip the training-step measurement")
    p.add_argument("--step-steps", type=int, default=6)
    args = p.parse_args()

    import tensorflow as tf
    from tfnas import data as data_lib

    t0 = time.perf_counter()
    images = data_lib.open_dataset(f"folder:{args.data}")
    open_s = time.perf_counter() - t0
    n = images.info.num_examples["train"]

    rates = []
    for epoch in range(args.epochs + 1):      # the first pass warms up tf.data
        ds = images.dataset("train", args.batch_size, augment=True, cutout=args.cutout, seed=0, epoch=epoch)
        t = time.perf_counter()
        count = 0
        for x, _ in ds:
            count += int(x.shape[0])
        if epoch:
            rates.append(count / (time.perf_counter() - t))
    pipeline = statistics.median(rates)
    result = {"pipeline_images_per_s": round(pipeline), "open_s": round(open_s, 2),
              "examples": n, "batch_size": args.batch_size, "cutout": args.cutout}
    print(f"pipeline: {pipeline:.0f} images/s (augment + cutout {args.cutout}, batch {args.batch_size}); "
          f"open/decode {open_s:.2f} s")

    if not args.no_step:
        import keras
        from tfnas.networks import NetworkCIFAR
        from tfnas.training import Trainer
        keras.utils.set_random_seed(0)
        model = NetworkCIFAR("DARTS_V2", init_channels=16, layers=8, num_classes=10)
        model.build((None, 32, 32, 3))
        trainer = Trainer(model, tf.distribute.get_strategy())
        ds = images.dataset("train", args.batch_size, augment=True, seed=0, epoch=0)
        batches = list(ds.take(args.step_steps + 2))
        step_fn = trainer.compiled(ds.element_spec).train
        for b in batches[:2]:                  # trace + warm-up
            step_fn(b).numpy()
        t = time.perf_counter()
        for b in batches[2:]:
            step_fn(b).numpy()
        step = args.step_steps * args.batch_size / (time.perf_counter() - t)
        result.update(step_images_per_s=round(step, 1), ratio=round(pipeline / step, 1))
        print(f"training step (small preset, batch {args.batch_size}): {step:.1f} images/s; "
              f"pipeline/step = {pipeline / step:.1f}x (need >= 10x)")
    result["loadavg"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
