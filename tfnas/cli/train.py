"""``train.py``: train a genotype from scratch, resumably, and export it.

Examples::

    python train.py --genotype DARTS_V2 --dataset folder:../shared/data/cifar10-mini --preset small
    python train.py --genotype DARTS_V2 --dataset cifar10 --data-dir ~/tensorflow_datasets --preset paper
    python train.py --out runs/my-run --resume
"""

from __future__ import annotations

import os
import re
import sys
import time

from tfnas.cli.common import ArgumentParser, UsageError, flags_set, print_json, run_cli

# flag -> TrainConfig field, for the hyper-parameter overrides
_OVERRIDES = {
    "init_channels": int, "layers": int, "epochs": int, "batch_size": int, "eval_batch_size": int,
    "lr": float, "lr_min": float, "momentum": float, "weight_decay": float, "grad_clip": float,
    "auxiliary_weight": float, "cutout": int, "drop_path_prob": float, "validation": float,
    "early_crop": int, "early_crop_epochs": int,
    "histogram_every": int, "intra_op_threads": int, "inter_op_threads": int,
}
_HELP = {
    "init_channels": "initial channels C", "layers": "number of cells",
    "epochs": "training epochs", "batch_size": "global batch size",
    "eval_batch_size": "batch size for evaluation", "lr": "initial learning rate (cosine to --lr-min)",
    "lr_min": "final learning rate", "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay added to the gradient (PyTorch SGD semantics)",
    "grad_clip": "global gradient-norm clip", "auxiliary_weight": "weight of the auxiliary loss",
    "cutout": "cutout square size in pixels (0: off)",
    "drop_path_prob": "final drop-path probability (ramps linearly from 0)",
    "early_crop": "train the first --early-crop-epochs epochs on random crops of this many pixels "
                  "of the unpadded images (cheaper steps; 0: off)",
    "early_crop_epochs": "how many epochs train on --early-crop crops",
    "validation": "examples (or a fraction < 1) carved from train and evaluated each epoch",
    "histogram_every": "weight histograms every N epochs (0: never)",
    "intra_op_threads": "TensorFlow intra-op threads", "inter_op_threads": "TensorFlow inter-op threads",
}


def build_parser() -> ArgumentParser:
    from tfnas.config import KERNEL_CHOICES, PRESETS, STRATEGIES
    p = ArgumentParser(
        prog="train.py",
        description="Train a cell genotype from scratch (DARTS NetworkCIFAR) with the reference "
                    "settings, resumably, with TensorBoard logs and a SavedModel export. "
                    "Search accuracy is not final accuracy: searched cells are re-trained here.")
    p.add_argument("--genotype", help="zoo name (DARTS_V2, ENAS, DARTS_V2_CONN3, ...), a JSON or "
                                      "Genotype(...) file, or the text itself (required unless --resume)")
    p.add_argument("--dataset", default=None,
                   help="cifar10, cifar100 (prepared tfds data) or folder:PATH with train/ and test/ "
                        "class sub-folders (default cifar10)")
    p.add_argument("--data-dir", help="prepared tensorflow-datasets directory (cifar10/cifar100)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="paper (C=36, 20 layers, 600 epochs, aux, cutout, drop path 0.2), study (same "
                        "network, no aux/cutout/drop path), small (C=16, 8 layers, 2-core CPU); "
                        "default small")
    for name, kind in _OVERRIDES.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=_HELP[name])
    p.add_argument("--auxiliary", dest="auxiliary", action="store_true", default=None,
                   help="train with the auxiliary head")
    p.add_argument("--no-auxiliary", dest="auxiliary", action="store_false")
    p.add_argument("--stem", choices=("auto", "cifar", "imagenet64"), default=None,
                   help="network stem: cifar (stride 1), imagenet64 (stride 2, for 64x64 images); "
                        "default auto (by image size)")
    p.add_argument("--kernels", choices=KERNEL_CHOICES, default=None,
                   help="operation kernels: cpu (CPU-tuned: 1x1 convs as matmuls, ...), standard "
                        "(TensorFlow's, cuDNN on a GPU) or auto (cpu on a CPU, else standard); "
                        "the same results either way; default auto")
    p.add_argument("--mixed-precision", action="store_true", default=None,
                   help="compute in float16 (Keras' mixed_float16) with float32 weights, BN, logits "
                        "and loss and dynamic loss scaling; for GPUs (slower on a CPU)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="bit-reproducible on CPU (op determinism; slower)")
    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="tf.distribute strategy: default (one device), mirrored (local devices), "
                        "multiworker (TF_CONFIG)")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="split the CPU into N logical devices (to try --strategy mirrored without GPUs)")
    p.add_argument("--out", help="run directory (default runs/<genotype>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (its config.json is used)")
    p.add_argument("--export-dir", help="where to export the SavedModel and .keras file "
                                        "(default saved_models/<run name>)")
    p.add_argument("--no-export", action="store_true", help="do not export at the end")
    p.add_argument("--json", action="store_true",
                   help="print the final summary as JSON on stdout (progress goes to stderr)")
    return p


def _config_from_args(args):
    from tfnas.resolve import resolve_genotype
    from tfnas.config import TrainConfig, TrainingConfigError
    if not args.genotype:
        raise UsageError("--genotype is required (a zoo name such as DARTS_V2, a file, or the text)")
    genotype = resolve_genotype(args.genotype)
    overrides = {name: getattr(args, name) for name in _OVERRIDES}
    overrides.update(auxiliary=args.auxiliary, seed=args.seed, deterministic=args.deterministic,
                     strategy=args.strategy, data_dir=args.data_dir, stem=args.stem,
                     kernels=args.kernels, mixed_precision=args.mixed_precision)
    config = TrainConfig.from_preset(args.preset or "small", genotype=args.genotype,
                                     dataset=args.dataset or "cifar10", **overrides)
    config.genotype_resolved = {**genotype.to_dict(), "name": genotype.name}
    try:
        config.validate()
    except TrainingConfigError as err:
        raise UsageError(str(err)) from None
    return config, genotype


def _default_out(genotype_name: str) -> str:
    safe = re.sub(r"[^\w.-]+", "_", genotype_name or "genotype")[:60]
    return os.path.join("runs", f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}")


# what --resume may change; every other flag is the stored config's
_RESUME_MAY_CHANGE = ("out", "resume", "epochs", "strategy", "cpu_devices", "export_dir",
                      "no_export", "json")


def _main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cpu_devices is not None:
        if args.cpu_devices < 1:
            raise UsageError("--cpu-devices must be >= 1")
        from tfnas.runtime import split_cpu
        try:
            split_cpu(args.cpu_devices)
        except RuntimeError as err:  # TF already initialised (only when called in-process)
            raise UsageError(f"--cpu-devices must be set before TensorFlow starts: {err}") from None
    from tfnas.config import TrainConfig, TrainingConfigError
    from tfnas.training import TrainingDivergedError, train

    if args.resume:
        if not args.out:
            raise UsageError("--resume needs --out DIR (the run directory to continue)")
        ignored = flags_set(parser, args, ignore=_RESUME_MAY_CHANGE)
        if ignored:
            raise UsageError(f"--resume continues the run as configured in its config.json; drop "
                             f"{', '.join(ignored)} (only --epochs and --strategy may change)")
        config_path = os.path.join(args.out, "config.json")
        if not os.path.isfile(config_path):
            raise UsageError(f"cannot resume: {config_path} not found")
        config = TrainConfig(epochs=args.epochs or 0, strategy=args.strategy or "default")
        name = os.path.basename(os.path.normpath(args.out))
        out = args.out
    else:
        config, genotype = _config_from_args(args)
        out = args.out or _default_out(genotype.name or "genotype")
        name = os.path.basename(os.path.normpath(out))
    export_dir = None if args.no_export else (args.export_dir or os.path.join("saved_models", name))
    log = sys.stderr if args.json else sys.stdout
    try:
        summary = train(config, out, resume=args.resume, export_dir=export_dir, log=log)
    except TrainingDivergedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except TrainingConfigError as err:
        raise UsageError(str(err)) from None
    if args.json:
        print_json(summary)
    else:
        final = summary.get("final") or {}
        if final:
            print(f"run directory: {summary['run_dir']}  final test accuracy "
                  f"{100 * final['test_acc']:.2f}% after {final['epoch']} epochs")
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
