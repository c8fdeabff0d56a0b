"""``search.py``: architecture search, resumably (one driver, one module per method).

Examples::

    python search.py --method darts --order 1 --preset small --dataset folder:../shared/data/cifar10-mini
    python search.py --method darts --order 2 --hessian exact --preset small --epochs 1 \\
        --dataset folder:../shared/data/cifar10-mini --out runs/darts-o2
    python search.py --method darts --preset paper --dry-run --json
    python search.py --out runs/darts-o2 --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from tfnas.cli.common import ArgumentParser, UsageError, flags_set, print_json, run_cli
from tfnas.kernels import KERNEL_CHOICES
from tfnas.search.settings import METHODS, SearchSettings, SearchSettingsError

# flag -> setting (SearchSettings field or a method-config field), with its type and help
_OVERRIDES = {
    "epochs": (int, "search epochs"),
    "batch_size": (int, "batch size of each half (weights and alphas)"),
    "init_channels": (int, "initial channels C of the search network"),
    "layers": (int, "number of search cells"),
    "steps_per_epoch": (int, "mini-batch pairs per epoch (0: the whole weight half)"),
    "eval_batches": (int, "alpha-split evaluation batches per epoch (0: all)"),
    "learning_rate": (float, "weights: initial SGD learning rate (cosine to --learning-rate-min)"),
    "learning_rate_min": (float, "weights: final learning rate"),
    "momentum": (float, "weights: SGD momentum"),
    "weight_decay": (float, "weights: L2 weight decay in the gradient"),
    "grad_clip": (float, "weights: global gradient-norm clip"),
    "arch_learning_rate": (float, "darts, alphas: Adam learning rate"),
    "arch_weight_decay": (float, "darts, alphas: L2 weight decay in the gradient"),
    "validation": (float, "enas/random: validation split carved from train for rewards and "
                          "derivation, a count or a fraction (default 0.1)"),
    "l2_reg": (float, "enas/random: L2 coefficient of sum(w^2) over the child's weights"),
    "dropout": (float, "enas/random: dropout before the child's classifier"),
    "derive_samples": (int, "enas/random: architectures sampled and scored to derive each "
                            "epoch's genotype"),
    "controller_updates": (int, "enas: controller updates per epoch"),
    "samples_per_update": (int, "enas: architectures averaged per controller update"),
    "controller_learning_rate": (float, "enas: controller Adam learning rate"),
    "entropy_weight": (float, "enas: entropy bonus of the reward"),
}
_METHOD_HELP = """methods:
  darts   DARTS (Liu et al. 2019): a supernet of every operation weighted by
          softmax(alpha); weights on one half of train, alphas on the other.
  enas    ENAS (Pham et al. 2018), micro search, as the reference's code:
          a weight-shared child trains one controller-sampled architecture
          per batch (Nesterov SGD, cosine with warm restarts); an LSTM
          controller learns by REINFORCE from the child's accuracy on one
          validation batch (BN in training mode) plus an entropy bonus.
          tfnas's choices where the reference differs or is silent
          (clipping, the validation split, operation biases): docs/search.md.
  random  random search with weight sharing (Li & Talwalkar 2019): ENAS's
          child and loop, architectures drawn uniformly, no controller.
Search accuracy is not final accuracy: re-train the genotype with train.py."""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="search.py", epilog=_METHOD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search a cell with DARTS (first or second order) and write the derived "
                    "genotype every epoch. Search accuracy is not final accuracy: re-train the "
                    "result from scratch with train.py --genotype <run>/genotype.json.")
    p.add_argument("--method", choices=sorted(METHODS), default="darts",
                   help="search method (default darts)")
    p.add_argument("--order", type=int, choices=(1, 2), default=None,
                   help="1: first-order DARTS; 2: unrolled (second-order) alpha gradient")
    p.add_argument("--hessian", choices=("fd", "exact"), default=None,
                   help="second order: fd (the reference's finite differences, default) or exact "
                        "(differentiate through the virtual step; its first step compiles for many "
                        "minutes and needs several times fd's memory, so use fd on a CPU; "
                        "docs/benchmarks.md)")
    p.add_argument("--reference-unclipped", action="store_true", default=None,
                   help="enas/random: apply the unclipped gradients, as the reference's code does "
                        "(a bug: it computes the clipped ones and applies the others)")
    p.add_argument("--low-memory", action="store_true", default=None,
                   help="run each cell's edges in loops over stacked per-edge variables and "
                        "recompute activations in the backward pass: the same supernet in much less "
                        "memory but slower per step; use it when the default form does not fit in "
                        "memory or for a bigger batch (--resume continues in the form the run "
                        "started with); not with --hessian exact; figures in docs/benchmarks.md")
    p.add_argument("--kernels", choices=KERNEL_CHOICES, default=None,
                   help="operation kernels: cpu (CPU-tuned), standard (TensorFlow's, cuDNN on "
                        "a GPU) or auto (cpu on a CPU, else standard); the same results either way; "
                        "default auto")
    p.add_argument("--preset", choices=("paper", "small"), default=None,
                   help="paper (the reference: darts 50 epochs, batch 64, C=16, 8 layers; enas/random "
                        "150 epochs, batch 160, C=20, 8 layers) or small (minutes on a 2-core CPU: "
                        "C=8, 5 layers, 3 short epochs); default small")
    p.add_argument("--space", choices=("darts", "enas"), default=None,
                   help="cell space: darts (8 ops, 4 nodes; 7 without none for enas/random) or enas "
                        "(5 ops, 5 nodes, loose ends); default: darts for --method darts, else enas")
    p.add_argument("--nodes", type=int, default=None,
                   help="intermediate nodes per cell (default: the space's, 4 for darts)")
    for name, (kind, text) in _OVERRIDES.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    p.add_argument("--dataset", default=None,
                   help="cifar10, cifar100 (prepared tfds data) or folder:PATH with train/ and "
                        "test/ class sub-folders (default cifar10); the train split is halved")
    p.add_argument("--data-dir", help="prepared tensorflow-datasets directory (cifar10/cifar100)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="bit-reproducible on CPU (op determinism)")
    p.add_argument("--strategy", choices=("default", "mirrored"), default=None,
                   help="tf.distribute strategy (mirrored: all local devices)")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="split the CPU into N logical devices (to try --strategy mirrored)")
    p.add_argument("--out", help="run directory (default runs/search-<method>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the search in --out from its last checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="build the search network and report its size; no data, no training")
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON on stdout (progress goes to stderr)")
    return p


def _settings_from_args(args):
    overrides = {name: getattr(args, name) for name in _OVERRIDES}
    overrides.update(order=args.order, hessian=args.hessian, space=args.space,
                     dataset=args.dataset, data_dir=args.data_dir, seed=args.seed,
                     deterministic=args.deterministic, strategy=args.strategy,
                     low_memory=args.low_memory, reference_unclipped=args.reference_unclipped,
                     kernels=args.kernels)
    _refuse_other_methods_flags(args.method, overrides)
    for name in ("epochs", "batch_size", "init_channels", "layers"):
        if overrides[name] is not None and overrides[name] < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("steps_per_epoch", "eval_batches"):
        if overrides[name] is not None and overrides[name] < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    if args.nodes is not None:
        from tfnas.space import SPACES
        if args.nodes < 1:
            raise UsageError("--nodes must be >= 1")
        default_space = METHODS[args.method].default_space
        overrides["space"] = dict(SPACES[args.space or default_space].to_dict(), num_nodes=args.nodes)
    if args.hessian and args.order != 2:
        raise UsageError("--hessian applies to --order 2 only")
    try:
        return SearchSettings.from_preset(args.preset or "small", method=args.method, **overrides)
    except SearchSettingsError as err:
        raise UsageError(str(err)) from None


def _refuse_other_methods_flags(method, overrides) -> None:
    """A flag of another method's settings is a one-line error naming it."""
    config = METHODS[method].config().to_dict()
    common = {f.name for f in dataclasses.fields(SearchSettings)}
    for name, value in overrides.items():
        if value is not None and name not in config and name not in common:
            raise UsageError(f"--{name.replace('_', '-')} does not apply to --method {method}")


def _dry_run(settings):
    from tfnas.data import DatasetInfo
    from tfnas.ops import kernel_policy
    from tfnas.search.driver import build_method
    t0 = time.time()
    info = DatasetInfo("dry-run", 10, (32, 32, 3), {}, (0.5,) * 3, (0.25,) * 3)
    method = build_method(settings, info)
    kernels = getattr(settings.config, "kernels", None)
    resolved = {} if kernels is None else {"kernels": kernel_policy(kernels).to_dict()}
    return {"method": settings.method, **method.sizes(), "init_channels": settings.init_channels,
            "layers": settings.layers, "num_classes": 10, "space": method.space.to_dict(),
            **resolved, "build_seconds": round(time.time() - t0, 1)}


def _main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            raise UsageError("--cpu-devices must be >= 1")
        from tfnas.runtime import split_cpu
        try:
            split_cpu(args.cpu_devices)
        except RuntimeError as err:
            raise UsageError(f"--cpu-devices must be set before TensorFlow starts: {err}") from None
    from tfnas.runtime import configure_graph_optimizer, configure_threads, inter_op_threads
    # One intra-op thread: measured fastest for NAS cells on small CPUs; the
    # inter-op pool as train.py (the search keeps one iterator per pipeline).
    configure_threads(1, inter_op_threads())
    configure_graph_optimizer()

    log = sys.stderr if args.json else sys.stdout
    if args.resume:
        if not args.out:
            raise UsageError("--resume needs --out DIR (the run directory to continue)")
        ignored = flags_set(parser, args, ignore=("out", "resume", "epochs", "cpu_devices", "json"))
        if ignored:
            raise UsageError(f"--resume continues the search as configured in its config.json; "
                             f"drop {', '.join(ignored)} (only --epochs may change)")
        from tfnas.search.driver import run_search
        settings = SearchSettings(epochs=args.epochs) if args.epochs else None
        summary = run_search(settings, args.out, resume=True, log=log)
    else:
        settings = _settings_from_args(args)
        if args.dry_run:
            result = _dry_run(settings)
            if args.json:
                print_json(result)
            else:
                sizes = ", ".join(f"{k} {v:,}" for k, v in result.items()
                                  if isinstance(v, int) and not isinstance(v, bool))
                print(f"{settings.method} search network ({settings.space} space): {sizes}")
            return 0
        from tfnas.search.driver import run_search
        out = args.out or os.path.join(
            "runs", f"search-{settings.method}-{time.strftime('%Y%m%d-%H%M%S')}")
        summary = run_search(settings, out, resume=False, log=log)
    if args.json:
        print_json(summary)
    else:
        print(f"derived genotype ({summary['genotype_file']}):\n  {summary['repr']}")
        print(f"normal cell: width {summary['normal_width']:g}c, depth {summary['normal_depth']}; "
              f"reduction cell: width {summary['reduce_width']:g}c, depth {summary['reduce_depth']}")
        print("Search accuracy is not final accuracy: the cell must be re-trained from scratch. "
              "Run:")
        print(f"  {summary['train_command']}")
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
