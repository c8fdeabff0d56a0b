"""``analyze.py hessian|gradvar|landscape``: probe a trained network.

TARGET is a training run directory (``config.json`` + checkpoints, from
``train.py``), a ``.keras`` file, or a SavedModel directory (inference only,
no training-mode BN).  The data are a split of ``--dataset`` (default: the
run's dataset), normalised as in training by :mod:`tfnas.data`, in the
split's fixed order.  Results go to ``--out`` (default ``TARGET/probes`` for
a run directory, else ``probes/`` next to the model file) as JSON and plots;
for a run directory, also as TensorBoard summaries under ``tb/probes``.
"""

from __future__ import annotations

import os
import sys
import time

from tfnas.cli.common import UsageError, print_json
from tfnas.files import atomic_write_json
from tfnas.progress import Progress

LOSS_NAME = "sparse categorical cross-entropy (from logits)"


# ------------------------------------------------------------------ parser

def register(subparsers) -> None:
    _register_hessian(subparsers)

    gradvar = subparsers.add_parser(
        "gradvar", help="gradient variance over the mini-batches of a split",
        description="E||g_i - g_bar||, E||g_i - g_bar||^2 and ||g_bar|| over the mini-batch "
                    "gradients of a split (all trainable parameters flattened; the batch size matters).")
    _common(gradvar)
    gradvar.add_argument("--per-layer", action="store_true", help="also per layer")
    gradvar.set_defaults(func=run_gradvar)

    landscape = subparsers.add_parser(
        "landscape", help="filter-normalised loss landscape (1-D curve or 2-D contour/surface)",
        description="Loss and accuracy at theta + a*d1 (+ b*d2) over a grid, with random "
                    "filter-normalised directions (Li et al. 2018), BN in inference mode.")
    _common(landscape, bn_mode=False)
    landscape.add_argument("--dims", type=int, choices=(1, 2), default=2)
    landscape.add_argument("--points", type=int, default=51, help="grid points per axis (default 51)")
    landscape.add_argument("--range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("MIN", "MAX"),
                           help="grid range per axis (default -1 1)")
    landscape.add_argument("--direction", choices=("random", "hessian"), default="random",
                           help="random filter-normalised directions, or the top Hessian eigenvectors "
                                "(scaled to the weights' norm)")
    landscape.add_argument("--towards", metavar="MODEL",
                           help="first direction: from TARGET's weights to this model's (.keras)")
    landscape.add_argument("--normalization", choices=("filter", "layer", "none"), default="filter")
    landscape.add_argument("--include-bias-bn", action="store_true",
                           help="perturb biases and BN parameters too (default: their directions are zero)")
    landscape.add_argument("--gradvar", action="store_true",
                           help="also the gradient variance at every point (3-D surface; slower)")
    landscape.add_argument("--resume", action="store_true",
                           help="continue an interrupted grid from OUT/landscape.npz")
    landscape.set_defaults(func=run_landscape)


def _register_hessian(subparsers) -> None:
    hessian = subparsers.add_parser(
        "hessian", help="Hessian eigenvalues (λ_max, λ_min, their ratio), trace and spectral density",
        description="Hessian eigenvalues (Lanczos, or power iteration), λ_max, λ_min and λ_min/λ_max "
                    "from one Lanczos run, each with its residual ||Hv - λv||/|λ|; the trace "
                    "(Hutchinson or Hutch++) with its standard error; the SLQ spectral density; of the "
                    "mean loss over a dataset split.  A result that misses its tolerance is reported "
                    "as 'not converged' with the flag to raise.")
    _common(hessian)
    hessian.add_argument("--top-n", type=int, default=1, help="number of eigenvalues (default 1)")
    hessian.add_argument("--which", choices=("LM", "LA", "SA"), default="LM",
                         help="eigenvalues of largest magnitude (LM, default), largest (LA) or smallest (SA)")
    hessian.add_argument("--method", choices=("lanczos", "power"), default="lanczos",
                         help="for the --top-n eigenvalues (default lanczos; power: LM only, stalls on a "
                              "±λ pair); λ_max and λ_min always come from Lanczos")
    hessian.add_argument("--max-iter", type=int, default=100,
                         help="Lanczos steps, or power iterations per eigenvalue (default 100)")
    hessian.add_argument("--tol", type=float, default=1e-3,
                         help="bound on each eigenpair's residual ||Hv - λv||/|λ| (default 1e-3)")
    hessian.add_argument("--trace", action="store_true", help="also estimate the trace")
    hessian.add_argument("--trace-method", choices=("hutchinson", "hutch++"), default="hutchinson",
                         help="Hutchinson (default) or Hutch++ (Lanczos sketch + Hutchinson on the rest: "
                              "fewer HVPs when a few eigenvalues dominate)")
    hessian.add_argument("--trace-max-iter", type=int, default=100,
                         help="HVPs for the trace at most (default 100)")
    hessian.add_argument("--trace-tol", type=float, default=1e-2,
                         help="stop the trace when its standard error is below this fraction of it "
                              "(default 0.01)")
    hessian.add_argument("--density", action="store_true", help="also the spectral density (SLQ) and its plot")
    hessian.add_argument("--density-steps", type=int, default=80, help="Lanczos steps per SLQ run (default 80)")
    hessian.add_argument("--hvp-mode", choices=("back_over_back", "forward_over_back"),
                         default="back_over_back",
                         help="nested GradientTapes (default, measured cheaper) or ForwardAccumulator")
    hessian.set_defaults(func=run_hessian)


def _common(p, bn_mode=True) -> None:
    p.add_argument("target", help="run directory, .keras file or SavedModel directory")
    p.add_argument("--dataset", help="dataset spec (cifar10, cifar100, folder:PATH); default: the run's")
    p.add_argument("--data-dir", help="tfds data directory (default: the run's)")
    p.add_argument("--split", default="test", help="split to probe (default test)")
    p.add_argument("--max-images", type=int, help="use N images of the split, a sample fixed by --seed with every class in it (default all)")
    p.add_argument("--batch-size", type=int, default=100, help="batch size (default 100)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="probe a float64 copy of the model for accurate curvature (slower)")
    if bn_mode:
        p.add_argument("--bn-mode", choices=("inference", "training"), default="inference",
                       help="BN with moving statistics (default) or batch statistics; "
                            "the model is never changed")
    p.add_argument("--seed", type=int, default=0, help="random vectors/directions seed (default 0)")
    p.add_argument("--out", help="output directory (default TARGET/probes or probes/ next to the model)")
    p.add_argument("--format", choices=("png", "pdf"), default="png", help="plot format (default png)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard summaries")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")


# ------------------------------------------------------------- loading

class Target:
    """A loaded model with where it came from and where its probes go."""

    def __init__(self, loaded):
        self.model, self.run_dir, self.config = loaded.model, loaded.run_dir, loaded.config
        self.saved_model = loaded.saved_model
        base = loaded.run_dir or os.path.dirname(loaded.path) or "."
        self.out_default = os.path.join(base, "probes")


def load_target(path: str) -> Target:
    """The model at ``path`` (:func:`tfnas.loading.load_trained_model`)."""
    from tfnas.loading import ModelLoadError, load_trained_model
    try:
        return Target(load_trained_model(path))
    except ModelLoadError as err:
        raise UsageError(str(err)) from None


def load_data(args, target: Target):
    """(batches dataset, description) of the chosen split."""
    from tfnas import data as data_lib
    spec = args.dataset or target.config.get("dataset")
    if not spec:
        raise UsageError("which data? pass --dataset (e.g. folder:PATH or cifar10)")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if args.max_images is not None and args.max_images < 1:
        raise UsageError("--max-images must be >= 1")
    data_dir = args.data_dir or target.config.get("data_dir")
    validation = target.config.get("validation", 0)
    source = data_lib.open_dataset(spec, data_dir, validation=validation)
    ds = source.sample(args.split, args.max_images, args.batch_size, args.seed)
    total = source.info.num_examples.get(args.split)
    if args.max_images is not None:
        total = min(total, args.max_images) if total is not None else args.max_images
    return ds, {"dataset": source.info.name, "split": args.split, "num_examples": total,
                "batch_size": args.batch_size}


def _prepare(args):
    import tensorflow as tf  # noqa: F401
    target = load_target(args.target)
    if target.saved_model and getattr(args, "bn_mode", "inference") == "training":
        raise UsageError("a SavedModel can only be probed in inference mode; use the .keras file or run directory")
    model = target.model
    if hasattr(model, "drop_path_prob"):
        # Probes see the network as evaluated: no drop path, even with BN in
        # training mode (the loaded copy is ours to set; files are untouched).
        model.drop_path_prob.assign(0.0)
    if args.dtype == "float64":
        from tfnas.probes import cast_model
        model = cast_model(model, "float64")
    ds, description = load_data(args, target)
    out = args.out or target.out_default
    os.makedirs(out, exist_ok=True)
    return target, model, ds, description, out


def _loss():
    import keras
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _probe_errors():
    from tfnas.plots import PlotError
    from tfnas.probes import ProbeError
    return (ProbeError, PlotError)


def _write_json(out, name, result) -> str:
    path = os.path.join(out, f"{name}.json")
    atomic_write_json(path, result)
    return path


def _report(args, result, lines):
    if args.json:
        print_json(result)
    else:
        for line in lines:
            print(line)


def _tensorboard(args, target, write):
    """Run ``write()`` under the run's ``tb/probes`` writer (if any)."""
    if args.no_tensorboard or target.run_dir is None:
        return None
    from tfnas.rundir import RunDir
    run = RunDir(target.run_dir, create=False)
    writer = run.tensorboard_writer("probes")
    with writer.as_default():
        write()
    run.close()
    return os.path.join(run.tb_dir, "probes")


def _image_summary(name, png_path, step=0):
    import tensorflow as tf
    with open(png_path, "rb") as fh:
        image = tf.image.decode_png(fh.read(), channels=4)[None]
    tf.summary.image(name, image, step=step)


def _epoch(target):
    try:
        from tfnas.rundir import RunDir
        metrics = RunDir(target.run_dir, create=False).read_metrics() if target.run_dir else []
        return int(max((m.get("epoch", 0) for m in metrics), default=0))
    except Exception:  # noqa: BLE001 - the step is cosmetic
        return 0


def _base_result(args, target, model, description):
    return {"target": os.path.abspath(args.target), "dtype": args.dtype, "loss": LOSS_NAME,
            "bn_mode": getattr(args, "bn_mode", "inference"), **description,
            "num_parameters": int(sum(int(v.numpy().size) for v in model.trainable_variables))}


# ------------------------------------------------------------- hessian

def _check_hessian_args(args) -> None:
    for name in ("top_n", "max_iter", "density_steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.trace_max_iter < 2:
        raise UsageError("--trace-max-iter must be >= 2 (a standard error needs two samples)")
    if args.trace and args.trace_method == "hutch++" and args.trace_max_iter < 3:
        raise UsageError("--trace-max-iter must be >= 3 for --trace-method hutch++ (a sketch and two samples)")
    if not (args.tol > 0 and args.trace_tol > 0):
        raise UsageError("--tol and --trace-tol must be > 0")
    if args.method == "power" and args.which != "LM":
        raise UsageError("--method power finds largest-magnitude eigenvalues only: use --which LM "
                         "or --method lanczos")


def _hessian_results(args, probe, result):
    """Run the eigen-solvers (and the trace) and record them in ``result``.
    Returns (eigenvalues, one-line "not converged" notes)."""
    import warnings
    from tfnas.probes import ProbeWarning
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)   # reported below, on one line with the CLI flag
        values = probe.eigenvalues(top_n=args.top_n, max_iter=args.max_iter, tol=args.tol,
                                   method=args.method, which=args.which)
        eigen = probe.last_result
        extremes = probe.extremes(max_iter=args.max_iter, tol=args.tol)
        trace = probe.trace(max_iter=args.trace_max_iter, tol=args.trace_tol, method=args.trace_method) \
            if args.trace else None
    result.update(method=args.method, which=args.which, hvp_mode=args.hvp_mode, tol=args.tol,
                  eigenvalues=[float(v) for v in values], residuals=[float(r) for r in eigen.residuals],
                  eigenvalues_converged=bool(eigen.converged), hvps_eigenvalues=eigen.num_matvecs,
                  extremes=extremes.to_dict())
    unconverged = [(f"eigenvalue {v:.6g}", r) for v, r in eigen.unconverged()] \
        + [(f"{name.replace('lambda', 'λ')} {v:.6g}", r) for name, v, r in extremes.unconverged()]
    if unconverged:
        notes.append(f"not converged (residual > --tol {args.tol:g}): "
                     + ", ".join(f"{what} (residual {r:.1e})" for what, r in unconverged)
                     + f"; raise --max-iter (now {args.max_iter})")
    if trace is not None:
        result.update(trace=trace.estimate, trace_standard_error=trace.standard_error,
                      trace_relative_error=trace.to_dict()["relative_error"], trace_method=trace.method,
                      trace_converged=bool(trace.converged), hvps_trace=trace.num_hvps)
        if not trace.converged:
            notes.append(f"not converged: trace {trace.estimate:.6g} ± {trace.standard_error:.3g} (standard "
                         f"error > --trace-tol {args.trace_tol:g} relative); raise --trace-max-iter "
                         f"(now {args.trace_max_iter})")
    result["converged"] = not notes
    return values, notes


def _hessian_lines(args, result, values):
    extremes = result["extremes"]
    status = "converged" if result["eigenvalues_converged"] else "NOT converged"
    lines = [f"top {len(values)} Hessian eigenvalue(s) ({args.method}, {args.which}, {result['hvps_eigenvalues']} "
             f"HVPs, {status}): " + ", ".join(f"{v:.6g} (residual {r:.1e})"
                                               for v, r in zip(result["eigenvalues"], result["residuals"]))]
    ratio = "n/a" if extremes["ratio"] is None else f"{extremes['ratio']:.4g}"
    lines.append(f"λ_max {extremes['lambda_max']:.6g} (residual {extremes['residuals']['lambda_max']:.1e}), "
                 f"λ_min {extremes['lambda_min']:.6g} (residual {extremes['residuals']['lambda_min']:.1e}), "
                 f"λ_min/λ_max {ratio} (lanczos, {extremes['num_hvps']} HVPs, "
                 f"{'converged' if extremes['converged'] else 'NOT converged'})")
    if args.trace:
        relative = result["trace_relative_error"]
        lines.append(f"trace {result['trace']:.6g} ± {result['trace_standard_error']:.3g} (standard error"
                     + (f", {100 * relative:.2g}%" if relative is not None else "")
                     + f"; {result['trace_method']}, {result['hvps_trace']} HVPs)")
    return lines


def run_hessian(args) -> int:
    _check_hessian_args(args)
    target, model, ds, description, out = _prepare(args)
    if target.saved_model:
        # Restored SavedModel functions carry first derivatives only: the
        # second derivative would silently come out as zero.
        raise UsageError("a SavedModel has no second derivatives; probe the Hessian of the .keras file "
                         "or the run directory instead")
    from tfnas import plots
    from tfnas.probes import HessianProbe
    try:
        t0 = time.time()
        probe = HessianProbe(model, _loss(), ds, training=args.bn_mode == "training",
                             hvp_mode=args.hvp_mode, seed=args.seed)
        result = _base_result(args, target, model, description)
        values, notes = _hessian_results(args, probe, result)
        density = None
        if args.density:
            density = probe.density(num_steps=args.density_steps)
            result["density"] = {"grid": density.grid[::10].tolist(), "density": density.density[::10].tolist(),
                                 "nodes": density.nodes.tolist(), "weights": density.weights.tolist(),
                                 "sigma": density.sigma}
        result["hvps_total"] = probe.num_hvps
        result["seconds"] = time.time() - t0
        plot = os.path.join(out, f"hessian_spectrum.{args.format}")
        plots.plot_spectrum(density, values, path=plot,
                            title=f"Hessian spectrum ({description['split']}, {description['num_examples']} images)")
    except _probe_errors() as err:
        raise UsageError(str(err)) from None
    result["plot"] = plot
    result["json"] = _write_json(out, "hessian", result)

    def summaries():
        import tensorflow as tf
        step = _epoch(target)
        for i, v in enumerate(values):
            tf.summary.scalar(f"hessian/eigenvalue_{i + 1}", float(v), step=step)
        for key in ("lambda_max", "lambda_min", "ratio"):
            if result["extremes"][key] is not None:
                tf.summary.scalar(f"hessian/{key}", result["extremes"][key], step=step)
        if args.trace:
            tf.summary.scalar("hessian/trace", result["trace"], step=step)
        if plot.endswith(".png"):
            _image_summary("hessian/spectrum", plot, step)
    result["tensorboard"] = _tensorboard(args, target, summaries)
    for note in notes:     # on stderr, so that --json output stays one JSON document
        print(note, file=sys.stderr)
    _report(args, result, _hessian_lines(args, result, values) + [f"wrote {result['json']} and {plot}"])
    return 0


# ------------------------------------------------------------- gradvar

def run_gradvar(args) -> int:
    target, model, ds, description, out = _prepare(args)
    from tfnas.probes import as_batches, gradient_variance
    try:
        t0 = time.time()
        batches = as_batches(ds)
        stats = gradient_variance(model, _loss(), batches, per_layer=args.per_layer,
                                  training=args.bn_mode == "training")
    except _probe_errors() as err:
        raise UsageError(str(err)) from None
    result = _base_result(args, target, model, description)
    result.update(stats)
    result["seconds"] = time.time() - t0
    result["json"] = _write_json(out, "gradvar", result)

    def summaries():
        import tensorflow as tf
        step = _epoch(target)
        for key in ("mean_norm_deviation", "mean_sq_deviation", "mean_gradient_norm"):
            tf.summary.scalar(f"gradvar/{key}", stats[key], step=step)
    result["tensorboard"] = _tensorboard(args, target, summaries)
    lines = [f"gradient variance over {stats['num_batches']} batches of {stats['batch_size']} "
             f"({description['dataset']} {description['split']}):",
             f"  E||g_i - g_bar||   = {stats['mean_norm_deviation']:.6g}",
             f"  E||g_i - g_bar||^2 = {stats['mean_sq_deviation']:.6g}",
             f"  ||g_bar||          = {stats['mean_gradient_norm']:.6g}"]
    if args.per_layer:
        worst = sorted(stats["layers"].items(), key=lambda kv: -kv[1]["mean_sq_deviation"])[:5]
        lines.append("  largest per-layer E||g_i - g_bar||^2: "
                     + ", ".join(f"{k} {v['mean_sq_deviation']:.3g}" for k, v in worst))
    lines.append(f"wrote {result['json']}")
    _report(args, result, lines)
    return 0


# ----------------------------------------------------------- landscape

def _landscape_progress():
    """``progress(done, total)`` for the landscape grid: a live line on a
    terminal, a line every 10 s elsewhere."""
    display = Progress(sys.stderr, "landscape", log_interval=10.0, slow_start=None)

    def progress(done, total):
        display.total = total
        display.update(done, "points")
        if done == total:
            display.finish()
    return progress


def _landscape_directions(args, model, loss, batches, ignore):
    """The directions of a new grid: towards another model, the top Hessian
    eigenvectors (scaled to the weights' norm), then random ones."""
    import numpy as np
    from tfnas.probes import HessianProbe, direction_to, random_direction
    rng = np.random.default_rng(args.seed)
    directions = []
    if args.towards:
        other_model = load_target(args.towards).model
        if args.dtype == "float64":
            from tfnas.probes import cast_model
            other_model = cast_model(other_model, "float64")
        directions.append(direction_to(model, other_model))
    if args.direction == "hessian":
        probe = HessianProbe(model, _loss(), batches, seed=args.seed)
        _, vectors = probe.eigenvalues(top_n=args.dims, method="lanczos", max_iter=100,
                                       tol=1e-3, return_vectors=True)
        scale = np.linalg.norm(loss.parameters())
        directions.extend(v * scale for v in vectors)
    while len(directions) < args.dims:
        directions.append(random_direction(model, None, rng, args.normalization, ignore))
    return directions


def _landscape_plots(args, land, out, description) -> dict:
    from tfnas import plots
    paths = {}
    title = f"{description['split']} loss, {description['num_examples']} images"
    if land.dims == 1:
        paths["curve"] = os.path.join(out, f"landscape_curve.{args.format}")
        plots.plot_landscape(land, paths["curve"], title=title)
        return paths
    paths["contour"] = os.path.join(out, f"landscape_contour.{args.format}")
    plots.plot_landscape(land, paths["contour"], kind="contour", title=title)
    paths["surface"] = os.path.join(out, f"landscape_surface.{args.format}")
    plots.plot_landscape(land, paths["surface"], kind="surface", title=title)
    if args.gradvar:
        paths["gradvar_surface"] = os.path.join(out, f"landscape_gradvar_surface.{args.format}")
        plots.plot_landscape(land, paths["gradvar_surface"], quantity="mean_norm_deviation",
                             kind="surface", title="gradient variance E‖g−ḡ‖")
    return paths


def _check_landscape_args(args) -> None:
    if args.points < 2:
        raise UsageError("--points must be >= 2")
    if not args.range[0] < args.range[1]:
        raise UsageError("--range MIN MAX needs MIN < MAX")
    if args.towards and args.direction == "hessian":
        raise UsageError("--towards and --direction hessian cannot be combined")


def run_landscape(args) -> int:
    _check_landscape_args(args)
    target, model, ds, description, out = _prepare(args)
    import numpy as np
    from tfnas.probes import ModelLoss, as_batches, loss_landscape
    if target.saved_model and args.normalization == "filter":
        print("note: layer types are not known in a SavedModel, so depthwise kernels are normalised as "
              "ordinary kernels; use the .keras file for exact filter normalisation", file=sys.stderr)
    checkpoint = os.path.join(out, "landscape.npz")
    ignore = None if args.include_bias_bn else "biasbn"
    try:
        t0 = time.time()
        batches = as_batches(ds)
        loss = ModelLoss(model, _loss())
        directions = None
        if not (args.resume and os.path.exists(checkpoint)):
            directions = _landscape_directions(args, model, loss, batches, ignore)
        land = loss_landscape(model, _loss(), batches, directions=directions,
                              num_points=args.points, span=tuple(args.range), seed=args.seed,
                              normalization=args.normalization, ignore=ignore,
                              with_gradient_variance=args.gradvar, checkpoint=checkpoint,
                              resume=args.resume, progress=_landscape_progress(), model_loss=loss)
        seconds = time.time() - t0
        plot_paths = _landscape_plots(args, land, out, description)
    except _probe_errors() as err:
        raise UsageError(str(err)) from None
    result = _base_result(args, target, model, description)
    centre = tuple(int(np.argmin(np.abs(land.x))) for _ in range(land.dims))
    result.update(direction=args.direction, towards=args.towards, normalization=args.normalization,
                  ignore=ignore, seconds=seconds, checkpoint=checkpoint, plots=plot_paths,
                  centre_loss=float(land.loss[centre]),
                  centre_accuracy=None if not np.isfinite(land.accuracy[centre]) else float(land.accuracy[centre]),
                  landscape=land.to_dict())
    result["json"] = _write_json(out, "landscape", result)

    def summaries():
        import tensorflow as tf
        step = _epoch(target)
        tf.summary.scalar("landscape/centre_loss", result["centre_loss"], step=step)
        for name, path in plot_paths.items():
            if path.endswith(".png"):
                _image_summary(f"landscape/{name}", path, step)
    result["tensorboard"] = _tensorboard(args, target, summaries)
    finite = land.loss[np.isfinite(land.loss)]
    lines = [f"{land.dims}-D landscape, {args.points} points per axis over [{args.range[0]:g}, {args.range[1]:g}] "
             f"in {seconds:.1f} s: loss {finite.min():.4g} .. {finite.max():.4g} "
             f"(centre {result['centre_loss']:.4g})",
             "wrote " + ", ".join([result["json"]] + list(plot_paths.values()))]
    _report(args, result, lines)
    return 0
