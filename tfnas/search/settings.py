"""Search settings, free of TensorFlow (the CLI imports them cheaply).

:class:`SearchSettings` is everything that defines a search run (saved as
its ``config.json``): what every method shares (data, network size, epochs,
seed, distribution) and ``method_config``, the typed settings of the chosen
method (:class:`DartsConfig`, ...).  :data:`METHODS` names each method's
config class and implementation module; a new method is a config class, a
row there and its module (see ``docs/DEVELOPING.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from tfnas.kernels import check_kernels
from tfnas.space import SPACES, CellSpace

__all__ = ["DartsConfig", "SharedChildConfig", "EnasConfig", "RandomConfig", "MethodInfo", "METHODS", "PRESETS", "SearchSettings", "HESSIAN_MODES",
           "SearchSettingsError"]

HESSIAN_MODES = ("fd", "exact")


class SearchSettingsError(ValueError):
    """Search settings that cannot run."""


class _MethodConfig:
    """Shared by the method configs (frozen dataclasses)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "_MethodConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def checkpoint_meta(self) -> dict:
        """Settings a checkpoint of this method must match to be resumed."""
        return {}


def _check_kernels_setting(kernels: str) -> None:
    try:
        check_kernels(kernels)
    except ValueError as e:
        raise SearchSettingsError(str(e)) from None


@dataclass(frozen=True)
class DartsConfig(_MethodConfig):
    """Optimisation settings of the DARTS search (the reference values)."""

    order: int = 1
    hessian: str = "fd"              # second order: "fd" (reference) or "exact"
    learning_rate: float = 0.025     # weights: SGD, cosine to learning_rate_min
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_learning_rate: float = 3e-4  # alphas: Adam
    arch_beta_1: float = 0.5
    arch_beta_2: float = 0.999
    arch_epsilon: float = 1e-8
    arch_weight_decay: float = 1e-3
    fd_radius: float = 0.01           # ε = fd_radius / ‖v‖
    low_memory: bool = False          # the loop-and-recompute supernet (slower, less memory)
    kernels: str = "auto"             # the operations' kernels (tfnas.kernels): auto | cpu | standard

    def __post_init__(self):
        _check_kernels_setting(self.kernels)
        if self.order not in (1, 2):
            raise SearchSettingsError(f"order must be 1 or 2, not {self.order!r}")
        if self.hessian not in HESSIAN_MODES:
            raise SearchSettingsError(f"hessian must be one of {HESSIAN_MODES}, not {self.hessian!r}")
        if self.order == 2 and self.hessian == "exact":
            self.check_second_derivatives(self.low_memory)

    @staticmethod
    def check_second_derivatives(low_memory: bool) -> None:
        """Refuse the exact hypergradient for a low-memory network:
        recomputed activations give first derivatives only."""
        if low_memory:
            raise SearchSettingsError(
                "the exact hypergradient (hessian exact) needs second derivatives, which a "
                "low-memory search network (recomputed activations) does not give: use hessian fd")

    def checkpoint_meta(self) -> dict:
        return {"order": self.order, "hessian": self.hessian}


@dataclass(frozen=True)
class SharedChildConfig(_MethodConfig):
    """The shared child of ENAS and of random search with weight sharing
    (the reference values of ENAS's micro search)."""

    learning_rate: float = 0.05       # SGD, cosine with warm restarts per epoch
    learning_rate_min: float = 0.0005
    restart_period: int = 10          # T0 (epochs)
    restart_multiplier: int = 2       # Tmul
    momentum: float = 0.9             # Nesterov
    l2_reg: float = 1e-4              # + l2_reg * sum(w^2) over all child weights, BN included
    grad_clip: float = 5.0            # global norm
    # The reference computes the clipped gradients but applies the unclipped
    # ones (a bug): True reproduces that.
    reference_unclipped: bool = False
    dropout: float = 0.1              # before the classifier (keep 0.9)
    derive_samples: int = 100         # architectures scored to derive the genotype
    sampled_histograms: bool = True   # width/depth histograms of the sampled architectures
    kernels: str = "auto"             # the operations' kernels (tfnas.kernels): auto | cpu | standard

    def __post_init__(self):
        _check_kernels_setting(self.kernels)
        if self.restart_period < 1 or self.restart_multiplier < 1:
            raise SearchSettingsError("restart_period and restart_multiplier must be >= 1")
        if self.derive_samples < 1:
            raise SearchSettingsError(f"derive_samples must be >= 1, not {self.derive_samples}")

    def checkpoint_meta(self) -> dict:
        return {"method_family": "shared_child"}


@dataclass(frozen=True)
class EnasConfig(SharedChildConfig):
    """ENAS: the shared child plus the LSTM controller and REINFORCE."""

    lstm_size: int = 64
    tanh_constant: float = 1.10
    op_tanh_reduce: float = 2.5
    controller_learning_rate: float = 0.0035   # Adam, beta_1 0, epsilon 1e-3
    controller_beta_1: float = 0.0
    controller_epsilon: float = 1e-3
    entropy_weight: float = 1e-4
    baseline_decay: float = 0.99
    samples_per_update: int = 10
    controller_updates: int = 30      # per epoch, after the child's epoch

    def checkpoint_meta(self) -> dict:
        return {"method_family": "enas"}


@dataclass(frozen=True)
class RandomConfig(SharedChildConfig):
    """Random search with weight sharing (Li & Talwalkar 2019): the shared
    child, architectures drawn uniformly, no controller."""

    def checkpoint_meta(self) -> dict:
        return {"method_family": "random"}


@dataclass(frozen=True)
class MethodInfo:
    config: type           # the method's config dataclass
    module: str            # the module whose ``METHOD`` is the SearchMethod class
    presets: dict          # preset name -> SearchSettings fields
    default_space: str = "darts"
    preset_config: dict = field(default_factory=dict)   # preset name -> method-config fields


_DARTS_PRESETS = {
    # The reference: 50 epochs, batch 64, C=16, 8 layers, full halves of train.
    "paper": dict(epochs=50, batch_size=64, init_channels=16, layers=8, steps_per_epoch=0,
                  eval_batches=0),
    # Minutes on a 2-core CPU (e.g. cifar10-mini): a smaller network and
    # 10 mini-batch pairs (320 + 320 images) per epoch.
    "small": dict(epochs=3, batch_size=32, init_channels=8, layers=5, steps_per_epoch=10,
                  eval_batches=4),
}
_SHARED_CHILD_PRESETS = {
    # The reference's search: 150 epochs, batch 160, C=20, 8 layers (6 normal
    # + 2 reduction cells), every training batch, 30 controller updates.
    "paper": dict(epochs=150, batch_size=160, init_channels=20, layers=8, steps_per_epoch=0,
                  eval_batches=0, validation=0.1),
    # Minutes on a 2-core CPU (e.g. cifar10-mini): C=8, 5 layers, 50 child
    # steps of 32 images and 10 controller updates per epoch, 20 derivation samples.
    "small": dict(epochs=4, batch_size=32, init_channels=8, layers=5, steps_per_epoch=50,
                  eval_batches=0, validation=0.1),
}
_SMALL_CONTROLLER = dict(controller_updates=10, derive_samples=20)
METHODS = {
    "darts": MethodInfo(DartsConfig, "tfnas.search.darts", _DARTS_PRESETS),
    "enas": MethodInfo(EnasConfig, "tfnas.search.enas", _SHARED_CHILD_PRESETS, "enas",
                       {"small": _SMALL_CONTROLLER}),
    "random": MethodInfo(RandomConfig, "tfnas.search.random_search", _SHARED_CHILD_PRESETS, "enas",
                         {"small": {"derive_samples": 20}}),
}
PRESETS = {name: info.presets for name, info in METHODS.items()}


@dataclass
class SearchSettings:
    """Everything that defines a search run (saved as ``config.json``)."""

    method: str = "darts"
    preset: str = "small"
    dataset: str = "cifar10"
    data_dir: str | None = None
    space: str | dict = "darts"   # a name in tfnas.space.SPACES or a CellSpace dict
    epochs: int = 3
    batch_size: int = 32
    init_channels: int = 8
    layers: int = 5
    steps_per_epoch: int = 0      # 0: the whole weight split
    eval_batches: int = 0         # evaluation batches of the architecture split per epoch (0: all)
    validation: float = 0         # methods that train on train and score on a validation split: its size
    seed: int = 0
    deterministic: bool = False
    strategy: str = "default"
    method_config: dict = field(default_factory=lambda: DartsConfig().to_dict())

    @classmethod
    def from_preset(cls, preset: str = "small", method: str = "darts", **overrides) -> "SearchSettings":
        """The ``preset`` of ``method`` with ``overrides`` (fields of these
        settings or of the method's config; ``None`` values are ignored)."""
        info = method_info(method)
        if preset not in info.presets:
            raise SearchSettingsError(f"unknown preset {preset!r}; choose from {', '.join(info.presets)}")
        values = dict(info.presets[preset], preset=preset, method=method, space=info.default_space)
        config = {**info.config().to_dict(), **info.preset_config.get(preset, {})}
        names = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if value is None:
                continue
            if key in names:
                values[key] = value
            elif key in config:
                config[key] = value
            else:
                raise SearchSettingsError(f"unknown {method} search setting {key!r}")
        values["method_config"] = info.config.from_dict(config).to_dict()   # validates
        return cls(**values)

    @classmethod
    def from_dict(cls, data) -> "SearchSettings":
        """Settings from a ``config.json``, including those written before
        ``method_config`` existed (a ``darts`` dict and a top-level
        ``low_memory``)."""
        data = dict(data)
        if "darts" in data and "method_config" not in data:
            data["method_config"] = {**data.pop("darts"), "low_memory": bool(data.pop("low_memory", False))}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def config(self):
        """The method's typed config (e.g. :class:`DartsConfig`)."""
        return method_info(self.method).config.from_dict(self.method_config)

    @property
    def cell_space(self) -> CellSpace:
        if isinstance(self.space, dict):
            return CellSpace.from_dict(self.space)
        if self.space not in SPACES:
            raise SearchSettingsError(f"unknown cell space {self.space!r}; choose from {', '.join(SPACES)}")
        return SPACES[self.space]

    def checkpoint_meta(self) -> dict:
        """What a checkpoint must match to be resumed into this run."""
        return {"init_channels": self.init_channels, "layers": self.layers, "space": self.space,
                "dataset": self.dataset, **self.config.checkpoint_meta()}


def method_info(method: str) -> MethodInfo:
    if method not in METHODS:
        raise SearchSettingsError(f"unknown search method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method]
