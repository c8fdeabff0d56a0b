"""Probe costs on NetworkCIFAR (DARTS_V2, C=16, 8 layers) and float32 precision.

1. HVP cost / gradient cost under tf.function, batch 64, both HVP modes.
2. HVPs needed for the top Hessian eigenvalue to 1% relative accuracy,
   power iteration vs Lanczos (reference: a tight Lanczos run).
3. An 11x11 landscape on 500 cifar10-mini test images vs the same number
   (121) of plain evaluations of those images; extrapolated 51x51 on 2,000.
4. float32 vs float64 relative error of the gradient and of an HVP
   (BN inference and training mode).

Usage: python bench/probes.py [--quick] [--run RUN_DIR]
(--run: use a trained run's weights instead of the random initialisation.)
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfnas.runtime import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from tfnas import data as data_lib  # noqa: E402
from tfnas.networks import NetworkCIFAR  # noqa: E402
from timing import median_seconds  # noqa: E402  (bench/timing.py)
from tfnas.probes import ModelLoss, as_batches, cast_model, lanczos, loss_landscape, power_iteration  # noqa: E402

SHARED = os.environ.get("TFNAS_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
DATA = "folder:" + os.path.abspath(os.path.join(SHARED, "data", "cifar10-mini"))
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def first_within(history, reference, rel=0.01):
    """Matvecs after which the estimate stays within ``rel`` of the reference."""
    ok = [abs(h - reference) <= rel * abs(reference) for h in history]
    for k in range(len(ok)):
        if all(ok[k:]):
            return k + 1
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a 5x5 landscape")
    parser.add_argument("--run", help="run directory whose trained weights to use")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7

    keras.utils.set_random_seed(0)
    if args.run:
        from tfnas.cli.analyze_probes import load_target
        model = load_target(args.run).model
    else:
        model = NetworkCIFAR("DARTS_V2", init_channels=16, layers=8, num_classes=10)
        model.build((None, 32, 32, 3))
    source = data_lib.open_dataset(DATA)
    test64 = as_batches(source.dataset("test", 64, shuffle=False, epoch=0), max_batches=1)
    x, y = test64[0]
    print(f"NetworkCIFAR DARTS_V2 C=16, 8 layers: {sum(int(np.prod(v.shape)) for v in model.trainable_variables):,} "
          f"trainable parameters; {'trained weights' if args.run else 'random initialisation'}", flush=True)

    # 1. HVP / gradient cost.
    results = {}
    loss = ModelLoss(model, LOSS)        # back-over-back, the default
    v = np.random.default_rng(0).standard_normal(loss.size)
    grad_s = median_seconds(lambda: loss.batch_gradient(x, y), 1, repeats)
    print(f"gradient, batch 64: {grad_s * 1e3:.0f} ms", flush=True)
    for mode in ("forward_over_back", "back_over_back"):
        hvp_loss = ModelLoss(model, LOSS, hvp_mode=mode)
        hvp_s = median_seconds(lambda: hvp_loss.batch_hvp(x, y, v), 1, repeats)
        results[mode] = hvp_s / grad_s
        print(f"HVP {mode}: {hvp_s * 1e3:.0f} ms = {hvp_s / grad_s:.2f} x gradient "
              f"(traced {hvp_loss.tracing_counts['hvp']}x)", flush=True)

    # 2. HVPs to 1% on the top eigenvalue (Hessian of the loss on the batch of 64).
    # The reference is the Lanczos run's own converged value (residual bound
    # 1e-6 relative); its history then says when it first came within 1%.
    matvec = lambda vec: loss.batch_hvp(x, y, vec)     # noqa: E731
    steps = 25 if args.quick else 50
    t0 = time.perf_counter()
    krylov = lanczos(matvec, loss.size, max_iter=steps, tol=1e-6, seed=1)
    reference = float(krylov.eigenvalues[0])
    # Power iteration converges slowly (eigengap); give it 3x the budget.
    power = power_iteration(matvec, loss.size, max_iter=3 * steps, tol=1e-9, seed=2)
    power_n, lanczos_n = first_within(power.history, reference), first_within(krylov.history, reference)
    print(f"top eigenvalue {reference:.6g} (Lanczos, {krylov.num_matvecs} HVPs, converged={krylov.converged}); "
          f"power after {power.num_matvecs} HVPs: {power.history[-1]:.6g}; HVPs to 1%: power {power_n}, "
          f"Lanczos {lanczos_n} ({time.perf_counter() - t0:.0f} s)", flush=True)

    # 3. Landscape 11x11 on 500 images vs 121 plain evaluations.
    side = 5 if args.quick else 11
    test500 = as_batches(source.dataset("test", 100, shuffle=False, epoch=0), max_batches=5)

    def plain_pass():
        for bx, by in test500:
            loss.batch_evaluate(bx, by)
    plain_pass()                                         # trace
    t0 = time.perf_counter()
    for _ in range(side * side):
        plain_pass()
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    land = loss_landscape(model, LOSS, test500, num_points=side, model_loss=loss)
    land_s = time.perf_counter() - t0
    per_image = land_s / (side * side * 500)
    full = per_image * 51 * 51 * 2000
    print(f"{side}x{side} landscape on 500 images: {land_s:.1f} s vs {side * side} plain evaluations "
          f"{plain_s:.1f} s = {land_s / plain_s:.3f}x (traces: {land.meta['tracing_counts']}); "
          f"51x51 on 2,000 images extrapolated: {full / 3600:.2f} h", flush=True)

    # 4. float32 vs float64 gradients and HVPs.
    model64 = cast_model(model, "float64")
    precision = {}
    for training in (False, True):
        l32 = loss if not training else ModelLoss(model, LOSS, training=True)
        l64 = ModelLoss(model64, LOSS, training=training)
        g32, g64 = l32.batch_gradient(x, y)[1], l64.batch_gradient(x, y)[1]
        h32, h64 = l32.batch_hvp(x, y, v), l64.batch_hvp(x, y, v)
        mode = "training" if training else "inference"
        precision[mode] = {"gradient": float(np.linalg.norm(g32 - g64) / np.linalg.norm(g64)),
                           "hvp": float(np.linalg.norm(h32 - h64) / np.linalg.norm(h64))}
        print(f"float32 vs float64, BN {mode} mode: gradient rel. error {precision[mode]['gradient']:.2e}, "
              f"HVP rel. error {precision[mode]['hvp']:.2e}", flush=True)

    print(json.dumps({
        "hvp_over_grad": round(results["back_over_back"], 3),          # the default mode
        "hvp_over_grad_forward_over_back": round(results["forward_over_back"], 3),
        "power_hvps_to_1pct": power_n if power_n is not None else f">{power.num_matvecs}",
        "lanczos_hvps_to_1pct": lanczos_n,
        "landscape_over_plain_evals": round(land_s / plain_s, 3),
        "landscape_51x51_2000_hours": round(full / 3600, 2),
        "f32_grad_rel_err": precision,
        "loadavg": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
