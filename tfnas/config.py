"""Training configuration, free of TensorFlow (the CLI imports it cheaply).

- :data:`PRESETS`: the reference evaluation settings and what each preset
  changes (``paper``, ``study``, ``small``);
- :class:`TrainConfig`: everything that defines a training run (saved as the
  run's ``config.json``), with :meth:`TrainConfig.network_spec` and
  :meth:`TrainConfig.checkpoint_meta`, the one place a run's network and
  the checkpoint it resumes from are derived from its config;
- :class:`NetworkSpec`: what :func:`tfnas.networks.build_network` builds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

from tfnas.kernels import KERNEL_CHOICES, check_kernels
from tfnas.resolve import genotype_from_config

__all__ = ["PRESETS", "STRATEGIES", "STEM_CHOICES", "KERNEL_CHOICES", "TrainConfig",
           "TrainingConfigError", "NetworkSpec", "MODEL_FIELDS", "stem_for"]


class TrainingConfigError(ValueError):
    """A training configuration that cannot run (bad values, occupied run directory)."""


# The reference evaluation settings, then what each preset changes.
_REFERENCE = dict(lr=0.025, lr_min=0.0, momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
                  auxiliary_weight=0.4)
PRESETS = {
    # The paper's final-model training (DARTS train.py with --auxiliary --cutout).
    "paper": dict(_REFERENCE, init_channels=36, layers=20, epochs=600, batch_size=96,
                  auxiliary=True, cutout=16, drop_path_prob=0.2),
    # The variant studies (the authors' scripts): same network, batch 80, no
    # cutout / aux / drop path.
    "study": dict(_REFERENCE, init_channels=36, layers=20, epochs=600, batch_size=80,
                  auxiliary=False, cutout=0, drop_path_prob=0.0),
    # The study's setting shrunk for a 2-core CPU and cifar10-mini, so that
    # 13 cells (12 stratified variants of DARTS_V2 and the base) train and
    # are probed in about two hours (analyze.py study; measured times:
    # docs/benchmarks.md): C=8, 5 cells (3 normal ones), 6 epochs.
    "study-small": dict(_REFERENCE, init_channels=8, layers=5, epochs=6, batch_size=80,
                        auxiliary=False, cutout=0, drop_path_prob=0.0),
    # Sized for a 2-core CPU and cifar10-mini (10k images) in about half an
    # hour: a C=16, 8-layer network, batch 64, no aux, cutout or drop path
    # (drop path slows a short run's convergence).  Measured times and
    # accuracies, and the alternatives tried: docs/benchmarks.md.
    "small": dict(_REFERENCE, init_channels=16, layers=8, epochs=20, batch_size=64,
                  auxiliary=False, cutout=0, drop_path_prob=0.0),
}
STRATEGIES = ("default", "mirrored", "multiworker")
STEM_CHOICES = ("auto", "cifar", "imagenet64")
_SMALL = PRESETS["small"]
# Fields whose change makes a checkpoint unusable (checked on --resume).
MODEL_FIELDS = ("init_channels", "layers", "auxiliary", "stem")


def stem_for(stem: str, image_shape) -> str:
    """``auto`` resolved: the imagenet64 stem for 64x64 images, else cifar."""
    if stem != "auto":
        return stem
    return "imagenet64" if tuple(image_shape[:2]) == (64, 64) else "cifar"


@dataclass(frozen=True)
class NetworkSpec:
    """An evaluation network: genotype (a dict with ``name``), size, head, stem,
    the kernel policy's setting (:mod:`tfnas.kernels`) and mixed precision."""

    genotype: dict
    init_channels: int
    layers: int
    num_classes: int
    image_shape: tuple
    auxiliary: bool = False
    stem: str = "cifar"
    kernels: str = "auto"
    mixed_precision: bool = False


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json``)."""

    genotype: str = "DARTS_V2"
    dataset: str = "cifar10"
    data_dir: str | None = None
    # The defaults are the small preset's (one place: PRESETS).
    preset: str = "small"
    init_channels: int = _SMALL["init_channels"]
    layers: int = _SMALL["layers"]
    epochs: int = _SMALL["epochs"]
    batch_size: int = _SMALL["batch_size"]
    eval_batch_size: int = 256
    lr: float = _SMALL["lr"]
    lr_min: float = _SMALL["lr_min"]
    momentum: float = _SMALL["momentum"]
    weight_decay: float = _SMALL["weight_decay"]
    grad_clip: float = _SMALL["grad_clip"]
    auxiliary: bool = _SMALL["auxiliary"]
    auxiliary_weight: float = _SMALL["auxiliary_weight"]
    cutout: int = _SMALL["cutout"]
    drop_path_prob: float = _SMALL["drop_path_prob"]
    early_crop: int = 0             # pixels; 0 = off (no preset sets it)
    early_crop_epochs: int = 0
    validation: float = 0           # examples (or fraction) carved from train, also evaluated
    seed: int = 0
    deterministic: bool = False
    strategy: str = "default"
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    histogram_every: int = 10       # weight histograms every N epochs (and the last)
    stem: str = "auto"              # cifar | imagenet64 | auto (imagenet64 for 64x64 images)
    kernels: str = "auto"           # auto (by device) | cpu (CPU-tuned) | standard (TensorFlow's): tfnas.kernels
    mixed_precision: bool = False   # Keras' mixed_float16 (for GPUs); BN, logits and loss in float32
    # Filled in when the run starts: the resolved genotype (so the run keeps
    # its cell even if the file it came from changes).
    genotype_resolved: dict = field(default_factory=dict)

    @classmethod
    def from_preset(cls, preset: str = "small", **overrides) -> "TrainConfig":
        if preset not in PRESETS:
            raise TrainingConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values = dict(PRESETS[preset], preset=preset)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self) -> None:
        problems = []
        for name in ("init_channels", "layers", "epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.layers < 3:
            problems.append(f"layers must be >= 3 (got {self.layers})")
        if not self.lr > 0 or not math.isfinite(self.lr):
            problems.append(f"lr must be positive (got {self.lr})")
        if not 0 <= self.drop_path_prob < 1:
            problems.append(f"drop_path_prob must be in [0, 1) (got {self.drop_path_prob})")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1) (got {self.momentum})")
        if self.weight_decay < 0 or self.grad_clip <= 0 or self.cutout < 0:
            problems.append("weight_decay and cutout must be >= 0 and grad_clip > 0")
        if self.early_crop < 0 or self.early_crop_epochs < 0:
            problems.append(f"early_crop and early_crop_epochs must be >= 0 "
                            f"(got {self.early_crop}, {self.early_crop_epochs})")
        elif bool(self.early_crop) != bool(self.early_crop_epochs):
            problems.append("early_crop and early_crop_epochs go together: give both or neither")
        if self.stem not in STEM_CHOICES:
            problems.append(f"stem must be auto, cifar or imagenet64 (got {self.stem!r})")
        try:
            check_kernels(self.kernels)
        except ValueError as e:
            problems.append(str(e))
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STRATEGIES)} (got {self.strategy!r})")
        if problems:
            raise TrainingConfigError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    # -- what the run derives from its config ----------------------------------------
    def resolved_genotype(self):
        """The run's genotype; the first call stores its resolution in the config."""
        genotype = genotype_from_config(self.genotype_resolved, self.genotype)
        self.genotype_resolved = {**genotype.to_dict(), "name": genotype.name}
        return genotype

    def network_spec(self, info) -> NetworkSpec:
        """The network this run trains on data described by ``info`` (a
        :class:`tfnas.data.DatasetInfo`)."""
        genotype = self.resolved_genotype()
        return NetworkSpec({**genotype.to_dict(), "name": genotype.name}, int(self.init_channels),
                           int(self.layers), int(info.num_classes), tuple(info.image_shape),
                           bool(self.auxiliary), stem_for(self.stem, info.image_shape),
                           self.kernels, bool(self.mixed_precision))

    def checkpoint_meta(self, info) -> dict:
        """What a checkpoint of this run must match to be resumed."""
        return {"genotype": self.genotype_resolved or self.network_spec(info).genotype,
                "dataset": info.name, "num_classes": info.num_classes,
                "image_shape": list(info.image_shape),
                **{k: getattr(self, k) for k in MODEL_FIELDS}}
