"""Probe costs on NetworkCIFAR (DARTS_V2, C=16, 8 layers) and float32 precision;
Hessian spectrum and trace on DARTS_V2 (C=8, 5 layers) against SciPy's eigsh.

1. HVP cost / gradient cost under tf.function, batch 64, both HVP modes.
2. HVPs needed for the top Hessian eigenvalue to 1% relative accuracy,
   power iteration vs Lanczos (reference: a tight Lanczos run).
3. An 11x11 landscape on 500 cifar10-mini test images vs the same number
   (121) of plain evaluations of those images; extrapolated 51x51 on 2,000.
4. float32 vs float64 relative error of the gradient and of an HVP
   (BN inference and training mode).
5. C=8, 5 layers, 64 test images, BN in inference mode: the library's
   default ``eigenvalues(top_n=3)`` and ``extremes()`` (lambda_max,
   lambda_min, ratio) against SciPy's ``eigsh`` (LM / LA / SA) over the same
   HVP; power iteration's answer to the same call for the record.
6. Same network: Hutchinson vs Hutch++ (Lanczos and random sketch) on one
   HVP budget each; HVPs to relative standard errors (--trace-rel),
   measured by replaying the stopping rule when the budget reaches them,
   and projected from the per-sample standard deviation.

Usage: python bench/probes.py [--quick] [--run RUN_DIR] [--parts cost,eigen,landscape,precision,spectrum,trace]
(--run: use a trained run's weights instead of the random initialisation,
for every part.)  Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfnas.runtime import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from tfnas import data as data_lib  # noqa: E402
from tfnas.resolve import get_genotype
from tfnas.networks import NetworkCIFAR  # noqa: E402
from timing import median_seconds  # noqa: E402  (bench/timing.py)
from tfnas.probes import (  # noqa: E402
    HessianProbe, ModelLoss, ProbeWarning, as_batches, cast_model, lanczos, loss_landscape, power_iteration,
)

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


PARTS = ("cost", "eigen", "landscape", "precision", "spectrum", "trace")


def load_model(args, channels, layers):
    """The run's model (``--run``) or an untrained DARTS_V2 NetworkCIFAR."""
    keras.utils.set_random_seed(0)
    if args.run:
        from tfnas.cli.analyze_probes import load_target
        return load_target(args.run).model
    model = NetworkCIFAR(get_genotype("DARTS_V2"), init_channels=channels, layers=layers, num_classes=10)
    model.build((None, 32, 32, 3))
    return model


def hvp_cost(loss, x, y, v, repeats):
    grad_s = median_seconds(lambda: loss.batch_gradient(x, y), 1, repeats)
    print(f"gradient, batch 64: {grad_s * 1e3:.0f} ms", flush=True)
    ratios = {}
    for mode in ("forward_over_back", "back_over_back"):
        hvp_loss = ModelLoss(loss.model, LOSS, hvp_mode=mode)
        hvp_s = median_seconds(lambda: hvp_loss.batch_hvp(x, y, v), 1, repeats)
        ratios[mode] = hvp_s / grad_s
        print(f"HVP {mode}: {hvp_s * 1e3:.0f} ms = {hvp_s / grad_s:.2f} x gradient "
              f"(traced {hvp_loss.tracing_counts['hvp']}x)", flush=True)
    return {"hvp_over_grad": round(ratios["back_over_back"], 3),          # the default mode
            "hvp_over_grad_forward_over_back": round(ratios["forward_over_back"], 3)}


def eigen_to_1pct(loss, x, y, quick):
    # HVPs to 1% on the top eigenvalue (Hessian of the loss on the batch of 64).
    # The reference is the Lanczos run's own converged value (residual bound
    # 1e-6 relative); its history then says when it first came within 1%.
    matvec = lambda vec: loss.batch_hvp(x, y, vec)     # noqa: E731
    steps = 25 if quick else 50
    t0 = time.perf_counter()
    krylov = lanczos(matvec, loss.size, max_iter=steps, tol=1e-6, seed=1)
    reference = float(krylov.eigenvalues[0])
    # Power iteration converges slowly (eigengap); give it 3x the budget.
    power = power_iteration(matvec, loss.size, max_iter=3 * steps, tol=1e-9, seed=2)
    power_n, lanczos_n = first_within(power.history, reference), first_within(krylov.history, reference)
    print(f"top eigenvalue {reference:.6g} (Lanczos, {krylov.num_matvecs} HVPs, converged={krylov.converged}); "
          f"power after {power.num_matvecs} HVPs: {power.history[-1]:.6g}; HVPs to 1%: power {power_n}, "
          f"Lanczos {lanczos_n} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"power_hvps_to_1pct": power_n if power_n is not None else f">{power.num_matvecs}",
            "lanczos_hvps_to_1pct": lanczos_n}


def landscape_cost(model, loss, source, quick):
    side = 5 if quick else 11
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
    return {"landscape_over_plain_evals": round(land_s / plain_s, 3),
            "landscape_51x51_2000_hours": round(full / 3600, 2)}


def float32_precision(model, loss, x, y, v):
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
    return {"f32_grad_rel_err": precision}


def eigsh_values(probe, k, which):
    """``k`` eigenvalues by ARPACK over the probe's HVP, ordered as the probe's
    ``which``; and the HVPs it took."""
    from scipy.sparse.linalg import LinearOperator, eigsh
    count = [0]

    def matvec(vector):
        count[0] += 1
        return probe.hvp(np.ravel(vector))
    operator = LinearOperator((probe.dim, probe.dim), matvec=matvec, dtype=np.float64)
    values = eigsh(operator, k=k, which=which, tol=1e-8, return_eigenvectors=False,
                   v0=np.random.default_rng(7).standard_normal(probe.dim))
    order = {"LM": np.argsort(-np.abs(values)), "LA": np.argsort(-values), "SA": np.argsort(values)}[which]
    return values[order], count[0]


def relative_gap(values, reference):
    return float(np.max(np.abs(np.asarray(values) - reference) / np.abs(reference)))


def spectrum_vs_eigsh(probe):
    """The library's defaults on the network of issue 24 against eigsh."""
    out = {}
    t0 = time.perf_counter()
    top = probe.eigenvalues(top_n=3)
    result = probe.last_result
    reference, eigsh_hvps = eigsh_values(probe, 3, "LM")
    out["default_top3"] = {**result.to_dict(), "eigsh": reference.tolist(), "eigsh_hvps": eigsh_hvps,
                           "max_rel_diff": relative_gap(top, reference)}
    print(f"default eigenvalues(top_n=3): {np.round(top, 6).tolist()}, residuals "
          f"{[f'{r:.1e}' for r in result.residuals]}, converged={result.converged}, {result.num_matvecs} HVPs; "
          f"eigsh LM {np.round(reference, 6).tolist()} ({eigsh_hvps} HVPs); max rel. diff "
          f"{out['default_top3']['max_rel_diff']:.1e} ({time.perf_counter() - t0:.0f} s)", flush=True)
    t0 = time.perf_counter()
    ends = probe.extremes()
    (lambda_max,), la_hvps = eigsh_values(probe, 1, "LA")
    (lambda_min,), sa_hvps = eigsh_values(probe, 1, "SA")
    out["extremes"] = {**ends.to_dict(), "eigsh": [float(lambda_max), float(lambda_min)],
                       "eigsh_hvps": la_hvps + sa_hvps,
                       "rel_diff": [abs(ends.lambda_max / lambda_max - 1), abs(ends.lambda_min / lambda_min - 1),
                                    abs(ends.ratio / (lambda_min / lambda_max) - 1)]}
    print(f"extremes(): λ_max {ends.lambda_max:.6g}, λ_min {ends.lambda_min:.6g}, ratio {ends.ratio:.4g}, "
          f"residuals {ends.residuals['lambda_max']:.1e} / {ends.residuals['lambda_min']:.1e}, "
          f"converged={ends.converged}, {ends.num_hvps} HVPs; eigsh LA/SA {lambda_max:.6g} / {lambda_min:.6g} "
          f"({la_hvps} + {sa_hvps} HVPs); rel. diff {max(out['extremes']['rel_diff']):.1e} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)
        power = probe.eigenvalues(top_n=3, max_iter=60, method="power")
    out["power_top3"] = probe.last_result.to_dict()
    print(f"power iteration (top_n=3, max_iter=60): {np.round(power, 4).tolist()}, residuals "
          f"{[f'{r:.2g}' for r in probe.last_result.residuals]}, converged={probe.last_result.converged}, "
          f"{probe.last_result.num_matvecs} HVPs ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def hvps_to_relative_error(result, target, reference):
    """(measured, projected) HVPs for the standard error to reach ``target``
    relative: measured by replaying the library's stopping rule on the
    samples (None if the budget fell short); projected from the per-sample
    standard deviation and the ``reference`` trace."""
    samples, offset = result.samples, result.sketch_trace
    cost = result.num_hvps - len(samples)
    measured = None
    for n in range(10, len(samples) + 1):
        se = samples[:n].std(ddof=1) / np.sqrt(n)
        if se <= target * abs(offset + samples[:n].mean()):
            measured = cost + n
            break
    projected = cost + int(np.ceil((samples.std(ddof=1) / (target * abs(reference))) ** 2))
    return measured, projected


def trace_hvps(probe, budget, targets):
    """Each estimator on ``budget`` HVPs; HVPs to each of ``targets`` (relative
    standard errors), projected with the inverse-variance mean of the three
    estimates."""
    runs = {"hutchinson": {"method": "hutchinson"},
            "hutch++ lanczos": {"method": "hutch++", "sketch": "lanczos", "sketch_size": budget // 3},
            "hutch++ random": {"method": "hutch++", "sketch": "random", "sketch_size": budget // 6}}
    results, seconds = {}, {}
    for name, kwargs in runs.items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ProbeWarning)        # the whole budget, on purpose
            results[name] = probe.trace(max_iter=budget, tol=1e-12, **kwargs)
        seconds[name] = time.perf_counter() - t0
    weights = {name: r.standard_error ** -2 for name, r in results.items()}
    reference = sum(weights[n] * r.estimate for n, r in results.items()) / sum(weights.values())
    plain_std = results["hutchinson"].samples.std(ddof=1)
    out = {"reference_trace": reference}
    for name, result in results.items():
        spread = float(result.samples.std(ddof=1))
        counts = {f"{target:g}": hvps_to_relative_error(result, target, reference) for target in targets}
        out[name] = {**result.to_dict(), "sample_std": spread, "variance_reduction": (plain_std / spread) ** 2,
                     "hvps_to_relative_error": {k: {"measured": m, "projected": p} for k, (m, p) in counts.items()}}
        to_targets = "; ".join(f"{100 * float(k):g}%: {m if m is not None else '>' + str(result.num_hvps)} measured, "
                               f"~{p:,} projected" for k, (m, p) in counts.items())
        print(f"trace, {name} (sketch {result.sketch_size}, {result.num_hvps} HVPs): {result.estimate:.5g} ± "
              f"{result.standard_error:.3g}, per-sample std {spread:.3g} (variance / "
              f"{out[name]['variance_reduction']:.2f}); HVPs to relative error {to_targets} "
              f"({seconds[name]:.0f} s)", flush=True)
    plain, plus = results["hutchinson"], results["hutch++ lanczos"]
    gap = abs(plain.estimate - plus.estimate) / np.hypot(plain.standard_error, plus.standard_error)
    print(f"reference trace (inverse-variance mean) {reference:.5g}; Hutchinson and Hutch++ (Lanczos) "
          f"differ by {gap:.2f} combined standard errors", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a 5x5 landscape")
    parser.add_argument("--run", help="run directory whose trained weights to use")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--trace-budget", type=int, default=120, help="HVPs per trace estimate (default 120)")
    parser.add_argument("--trace-rel", default="0.1,0.01",
                        help="relative standard errors to reach, comma-separated (default 0.1,0.01)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if not set(parts) <= set(PARTS):
        parser.error(f"--parts: choose from {','.join(PARTS)}")
    repeats = 3 if args.quick else 7
    source = data_lib.open_dataset(DATA)
    test64 = as_batches(source.dataset("test", 64, shuffle=False, epoch=0), max_batches=1)
    x, y = test64[0]
    results = {}
    weights = "trained weights" if args.run else "random initialisation"
    if set(parts) & {"cost", "eigen", "landscape", "precision"}:
        model = load_model(args, 16, 8)
        print(f"NetworkCIFAR DARTS_V2 C=16, 8 layers: {count_parameters(model):,} trainable parameters; "
              f"{weights}", flush=True)
        loss = ModelLoss(model, LOSS)        # back-over-back, the default
        v = np.random.default_rng(0).standard_normal(loss.size)
        if "cost" in parts:
            results.update(hvp_cost(loss, x, y, v, repeats))
        if "eigen" in parts:
            results.update(eigen_to_1pct(loss, x, y, args.quick))
        if "landscape" in parts:
            results.update(landscape_cost(model, loss, source, args.quick))
        if "precision" in parts:
            results.update(float32_precision(model, loss, x, y, v))
    if set(parts) & {"spectrum", "trace"}:
        small = load_model(args, 8, 5)
        probe = HessianProbe(small, LOSS, test64)
        print(f"NetworkCIFAR DARTS_V2 C=8, 5 layers: {probe.dim:,} trainable parameters; {weights}; 64 test "
              f"images, BN inference mode, float32", flush=True)
        if "spectrum" in parts:
            results["spectrum"] = spectrum_vs_eigsh(probe)
        if "trace" in parts:
            results["trace"] = trace_hvps(probe, args.trace_budget, [float(t) for t in args.trace_rel.split(",")])
    results["loadavg"] = os.getloadavg()[0]
    print(json.dumps(results, default=float))


def count_parameters(model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


if __name__ == "__main__":
    main()
