"""``analyze.py study``: train and probe a set of cells, then draw and
report what they show (the paper's study, end to end).

    analyze.py study --out studies/darts --genotype DARTS_V2 --variants stratified --per-band 3 \\
        --dataset folder:../shared/data/cifar10-mini --preset study-small --probe-epochs 1,3,final
    analyze.py study --out studies/darts            # continue it (finished jobs are skipped)
    analyze.py study --status studies/darts         # what is done, running, failed
"""

from __future__ import annotations

import sys

from tfnas.cli.common import UsageError, flags_set, parse_seed_range, print_json

# Flags -> StudySettings fields (to refuse changing a stored study by name).
# flag destination -> the top-level StudySettings field it sets (the rest: "probe")
_FIELDS = {"genotype": "genotype", "variants": "variants", "per_band": "per_band",
           "bands": "bands", "design_seed": "design_seed", "variant_seeds": "variant_seeds",
           "compare": "compare", "seeds": "seeds", "preset": "preset", "dataset": "dataset",
           "data_dir": "data_dir", "deterministic": "deterministic",
           "early_epoch": "analysis", "target_loss": "analysis"}
_OVERRIDES = ("epochs", "init_channels", "layers", "batch_size")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help="train and probe a genotype's variants; figures, correlations and a report",
        description="Train a set of cells (a genotype and its variants, or a list), probe each "
                    "(Hessian, gradient variance, loss landscape), and write figures and "
                    "report.md/.html/.json with rank correlations of width and depth against "
                    "convergence speed, accuracy, curvature and gradient variance.  One study is one "
                    "directory (--out); running it again skips what is done and resumes the rest.")
    p.add_argument("--out", help="study directory (new, or an existing study to continue)")
    p.add_argument("--status", metavar="DIR", help="print what is done, running, interrupted or failed")
    _design_flags(p)
    _probe_flags(p)
    run = p.add_argument_group("where it runs")
    run.add_argument("--workers", type=int, default=1,
                     help="jobs in parallel processes (one GPU each when there are GPUs; default 1: "
                          "one job at a time in this process)")
    run.add_argument("--ray", metavar="ADDRESS",
                     help="submit every job as a Ray task to this cluster (or 'auto'); the study "
                          "directory must be on a file system all nodes share; needs pip install "
                          "-e \".[ray]\"")
    run.add_argument("--threads", type=int, help="TensorFlow threads per job (default: TF's choice)")
    run.add_argument("--report-only", action="store_true", help="only (re)write figures and reports")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_study_command, study_parser=p)


def _design_flags(p) -> None:
    g = p.add_argument_group("which cells and how they train")
    g.add_argument("--genotype", default="DARTS_V2", help="base genotype, always in the study (default DARTS_V2)")
    g.add_argument("--variants", default=None,
                   help="stratified (connection variants per normal-cell width band), conn or ops "
                        "(with --variant-seeds), widest, deepest; comma-separated")
    g.add_argument("--per-band", type=int, default=3, help="stratified: variants per width band (default 3)")
    g.add_argument("--bands", default="2,2.5,3,3.5", help="stratified: width bands in c (default 2,2.5,3,3.5)")
    g.add_argument("--design-seed", type=int, default=0, help="stratified: the draw's seed (default 0)")
    g.add_argument("--variant-seeds", default=None, help="conn/ops: the variants' seeds, e.g. 1-10")
    g.add_argument("--compare", nargs="+", default=[], metavar="GENOTYPE",
                   help="further cells by name or file (e.g. NASNet NASNet_ADAPT DARTS_V2_WIDEST)")
    g.add_argument("--seeds", default="1", help="training seeds per cell: a count N (seeds 0..N-1) "
                                                "or a list like 0,3 (default 1)")
    g.add_argument("--preset", default="study-small",
                   help="training preset: study (C=36, 20 cells, 600 epochs, batch 80), study-small "
                        "(default; a 2-core CPU), or any train.py preset")
    g.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or folder:PATH (default cifar10)")
    g.add_argument("--data-dir", help="prepared tensorflow-datasets directory")
    for name in _OVERRIDES:
        g.add_argument("--" + name.replace("_", "-"), type=int, help=f"override the preset's {name}")
    g.add_argument("--deterministic", action="store_true",
                   help="bit-reproducible runs, the same on every executor (deterministic ops, one "
                        "intra-op thread per job: slower)")


def _probe_flags(p) -> None:
    g = p.add_argument_group("probes and read-out")
    g.add_argument("--probe-epochs", default="final",
                   help="epochs to probe, e.g. 1,5,final (their checkpoints are kept; default final)")
    g.add_argument("--probe-images", default="1000", help="N images of the split (a seeded sample, the same for every cell), or 'all' (default 1000)")
    g.add_argument("--probe-split", default="test", help="split to probe (default test)")
    g.add_argument("--probe-batch", type=int, default=100,
                   help="batch size of the probes; the gradient variance's batch size (default 100)")
    g.add_argument("--hessian-weights", choices=("rank2", "all"), default="rank2",
                   help="rank2: weights of rank > 1 only, as the authors (default); all trainable")
    g.add_argument("--top-n", type=int, default=2, help="top Hessian eigenvalues (default 2)")
    g.add_argument("--hessian-iter", type=int, default=40, help="Lanczos steps at most (default 40)")
    g.add_argument("--trace-iter", type=int, default=30, help="Hutchinson HVPs at most (default 30)")
    g.add_argument("--landscape-epochs", default="final", help="epochs with a landscape (default final)")
    g.add_argument("--landscape-points", type=int, default=21, help="grid points per axis (default 21)")
    g.add_argument("--landscape-images", default="1000", help="images for the landscape, or 'all' (default 1000)")
    g.add_argument("--paper-landscape", action="store_true",
                   help="the paper's grid: 51x51 over the whole split")
    g.add_argument("--no-gradvar-surface", action="store_true", help="no gradient variance over the grid")
    g.add_argument("--early-epoch", type=int, help="what a NAS algorithm sees: accuracy at this epoch "
                                                   "(default min(5, epochs/4))")
    g.add_argument("--target-loss", type=float,
                   help="convergence speed = epochs to reach this test loss (default: the highest of "
                        "the cells' best test losses, which every cell reaches)")


def _images(text: str, flag: str):
    if text in ("all", "none", "0"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag} must be a number or 'all' (got {text!r})") from None
    if value < 1:
        raise UsageError(f"{flag} must be >= 1 or 'all'")
    return value


def _epochs(text: str, flag: str) -> list:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part == "final":
            out.append("final")
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise UsageError(f"{flag}: {part!r} is not an epoch (>= 1) or 'final'")
    return out


def _seeds(text: str) -> list:
    if text.isdigit():
        if int(text) < 1:
            raise UsageError("--seeds N needs N >= 1")
        return list(range(int(text)))
    return parse_seed_range(text)


def settings_from_args(args):
    from tfnas.study.design import AnalysisSettings, ProbeSettings, StudySettings
    try:
        bands = [float(b) for b in args.bands.split(",") if b.strip()]
    except ValueError:
        raise UsageError(f"--bands must be numbers like 2,2.5,3 (got {args.bands!r})") from None
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else []
    probe = ProbeSettings(
        epochs=_epochs(args.probe_epochs, "--probe-epochs"), split=args.probe_split,
        images=_images(args.probe_images, "--probe-images"), batch_size=args.probe_batch,
        hessian_weights=args.hessian_weights, top_n=args.top_n, hessian_iter=args.hessian_iter,
        trace_iter=args.trace_iter, landscape_epochs=_epochs(args.landscape_epochs, "--landscape-epochs"),
        landscape_points=51 if args.paper_landscape else args.landscape_points,
        landscape_images=None if args.paper_landscape else _images(args.landscape_images, "--landscape-images"),
        landscape_gradvar=not args.no_gradvar_surface)
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    return StudySettings(
        genotype=args.genotype, variants=variants, per_band=args.per_band, bands=bands,
        design_seed=args.design_seed,
        variant_seeds=parse_seed_range(args.variant_seeds) if args.variant_seeds else [],
        compare=list(args.compare), seeds=_seeds(args.seeds), preset=args.preset, overrides=overrides,
        dataset=args.dataset, data_dir=args.data_dir, deterministic=bool(args.deterministic), probe=probe,
        analysis=AnalysisSettings(early_epoch=args.early_epoch, target_loss=args.target_loss))


def _given_fields(args) -> set:
    """StudySettings fields the user set on the command line (top level)."""
    flags = flags_set(args.study_parser, args, ignore=("out", "status", "workers", "ray", "threads",
                                                       "report_only", "json", "study_parser"))
    given = set()
    for flag in flags:
        dest = flag.split("/")[0].lstrip("-").replace("-", "_")
        given.add("overrides" if dest in _OVERRIDES else _FIELDS.get(dest, "probe"))
    return given


def print_status(status: dict) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(status["counts"].items()))
    print(f"study {status['study']}: {counts}")
    for run in status["runs"]:
        print(f"  {run['run']}: {run['epochs_done']}/{run['epochs']} epochs")
    for job in status["jobs"]:
        if job["state"] in ("running", "interrupted", "failed"):
            detail = job.get("error") or f"since {job.get('since')} on {job.get('host')}"
            print(f"  {job['state']:>11}: {job['job']} ({detail})")
    if status["report"]:
        print(f"report: {status['report']}")


def _report_only(args, settings, given) -> int:
    from tfnas.study.design import Manifest
    from tfnas.study.report import write_report
    from tfnas.study.run import open_study
    if not Manifest(args.out).exists():
        raise UsageError(f"{args.out} holds no study yet (no study.json)")
    open_study(args.out, settings, given)     # a new --early-epoch or --target-loss applies
    written = write_report(args.out, log=sys.stderr if args.json else sys.stdout)
    if args.json:
        print_json(written)
    return 0


def run_study_command(args) -> int:
    from tfnas.study.design import StudyError
    if args.status:
        from tfnas.study.run import study_status
        try:
            status = study_status(args.status)
        except StudyError as err:
            raise UsageError(str(err)) from None
        print_json(status) if args.json else print_status(status)
        return 0
    if not args.out:
        raise UsageError("give --out DIR (a new or existing study) or --status DIR")
    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    if args.workers > 1 and args.ray:
        raise UsageError("--workers and --ray exclude each other (Ray places the jobs itself)")
    try:
        settings = settings_from_args(args)
        given = _given_fields(args)
        if args.report_only:
            return _report_only(args, settings, given)
        from tfnas.study.run import run_study
        outcome = run_study(args.out, settings, given=given, workers=args.workers, ray=args.ray,
                            threads=args.threads, log=sys.stderr if args.json else sys.stdout)
    except (StudyError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    if args.json:
        print_json({"session": outcome["session"], "report": outcome["report"],
                    "failed": [r for r in outcome["results"] if r["state"] == "failed"]})
    return 1 if any(r["state"] == "failed" for r in outcome["results"]) else 0
