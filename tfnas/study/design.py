"""What a study is, without TensorFlow: its cells, its settings, its manifest.

- :func:`choose_cells`: the cells of a study from a base genotype and a
  design -- ``stratified`` connection variants per normal-cell width band
  (the paper's C1..C12), ``conn``/``ops`` variants of given seeds, the
  ``widest``/``deepest`` rewirings, and/or an explicit list; the base is
  always first.  Each :class:`StudyCell` carries its resolved genotype,
  width and depth (normal and reduction cell) and parameter count.
- :class:`StudySettings`: everything that defines the study's results
  (design, training preset and overrides, seeds, data, probe settings);
  :class:`ProbeSettings` the probes; :class:`AnalysisSettings` the
  read-out (early epoch, loss target, bootstrap), which may change
  without re-running anything.
- :class:`Manifest`: ``study.json`` (settings, cells, runs); a study
  directory keeps its settings: a run with other ones is refused by name.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field

from tfnas.config import PRESETS, TrainConfig
from tfnas.files import atomic_write_json
from tfnas.genotypes import Genotype, GenotypeError
from tfnas.plan import parameter_counts
from tfnas.resolve import resolve_genotype
from tfnas.topology import cell_depth, cell_width
from tfnas.variants import (DARTS_STUDY_BANDS, REWIRINGS, VARIANT_KINDS, deepest_rewiring,
                            make_variants, stratified_variants, widest_rewiring)

__all__ = ["DESIGNS", "MANIFEST", "StudyError", "StudyCell", "ProbeSettings", "AnalysisSettings",
           "StudySettings", "choose_cells", "train_config", "run_name", "Manifest"]

MANIFEST = "study.json"
DESIGNS = ("stratified",) + VARIANT_KINDS + REWIRINGS
FINAL = "final"


class StudyError(ValueError):
    """A study that cannot run as asked (bad design, settings that differ
    from the study directory's)."""


@dataclass
class StudyCell:
    """One cell of a study: its genotype and topology."""

    name: str
    genotype: dict              # Genotype.to_dict() plus "name"
    role: str                   # base | variant | rewiring | compare
    width: float                # normal cell, units of c
    depth: int
    reduce_width: float
    reduce_depth: int
    params: int = 0             # at the study's C and layers, without the auxiliary head

    def to_genotype(self) -> Genotype:
        return Genotype.from_dict(self.genotype, name=self.name)

    @classmethod
    def from_genotype(cls, genotype: Genotype, role: str, init_channels: int, layers: int,
                      num_classes: int = 10) -> "StudyCell":
        normal, reduce = genotype.cell("normal"), genotype.cell("reduce")
        params = parameter_counts(genotype, init_channels, layers, num_classes)["params"]
        return cls(genotype.name, {**genotype.to_dict(), "name": genotype.name}, role,
                   cell_width(normal), cell_depth(normal), cell_width(reduce), cell_depth(reduce),
                   params)


@dataclass
class ProbeSettings:
    """What is probed of each trained model (see :mod:`tfnas.study.probing`)."""

    epochs: list = field(default_factory=lambda: [FINAL])   # ints (from 1) and/or "final"
    split: str = "test"
    images: int | None = 1000         # a seeded sample of N images of the split (None: all)
    batch_size: int = 100             # also the gradient variance's batch size
    hessian_weights: str = "rank2"    # rank2: weights of rank > 1 (the authors'); all
    top_n: int = 2                    # top eigenvalues (largest algebraic)
    hessian_iter: int = 40            # Lanczos steps at most
    hessian_tol: float = 1e-2
    trace_iter: int = 30              # Hutchinson HVPs at most
    trace_tol: float = 5e-2
    landscape_epochs: list = field(default_factory=lambda: [FINAL])
    landscape_points: int = 21        # per axis (the paper: 51)
    landscape_span: float = 1.0       # grid [-span, span]^2
    landscape_images: int | None = 1000   # (the paper: the whole test split)
    landscape_gradvar: bool = True    # the gradient-variance surface too
    seed: int = 0

    def validate(self) -> None:
        problems = []
        for name in ("batch_size", "top_n", "hessian_iter", "landscape_points"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1")
        if self.trace_iter < 2:
            problems.append("trace_iter must be >= 2 (a standard error needs two samples)")
        if self.landscape_points < 2:
            problems.append("landscape_points must be >= 2")
        for name in ("images", "landscape_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (or all)")
        if self.hessian_weights not in ("rank2", "all"):
            problems.append(f"hessian_weights must be rank2 or all (got {self.hessian_weights!r})")
        for name in ("epochs", "landscape_epochs"):
            bad = [e for e in getattr(self, name) if e != FINAL and not (isinstance(e, int) and e >= 1)]
            if bad:
                problems.append(f"probe {name} must be epochs >= 1 or 'final' (got {bad})")
        if problems:
            raise StudyError("; ".join(problems))


@dataclass
class AnalysisSettings:
    """How the results are read (may change between runs of a study)."""

    early_epoch: int | None = None    # what a NAS algorithm sees; default min(5, max(2, epochs // 4)), before the last
    target_loss: float | None = None  # default: the highest of the cells' best test losses
    resamples: int = 2000             # bootstrap resamples
    level: float = 0.95

    def early(self, epochs: int) -> int:
        if self.early_epoch:
            return min(int(self.early_epoch), epochs)
        # at least two epochs: the early test-loss area is then a curve, not one point
        return max(1, min(5, max(2, epochs // 4), epochs - 1))


@dataclass
class StudySettings:
    """Everything that defines a study's results."""

    genotype: str = "DARTS_V2"
    variants: list = field(default_factory=list)      # designs of DESIGNS
    per_band: int = 3
    bands: list = field(default_factory=lambda: list(DARTS_STUDY_BANDS))
    design_seed: int = 0
    variant_seeds: list = field(default_factory=list)
    compare: list = field(default_factory=list)
    seeds: list = field(default_factory=lambda: [0])  # training seeds per cell
    preset: str = "study-small"
    overrides: dict = field(default_factory=dict)     # TrainConfig fields over the preset
    dataset: str = "cifar10"
    data_dir: str | None = None
    deterministic: bool = False
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)

    def validate(self) -> None:
        unknown = [v for v in self.variants if v not in DESIGNS]
        if unknown:
            raise StudyError(f"unknown variant design(s) {unknown}; choose from {', '.join(DESIGNS)}")
        if set(self.variants) & set(VARIANT_KINDS) and not self.variant_seeds:
            raise StudyError("--variants conn/ops need --variant-seeds (e.g. 1-10)")
        if self.preset not in PRESETS:
            raise StudyError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise StudyError(f"training seeds must be distinct and at least one (got {self.seeds})")
        self.train_config(self.genotype, self.seeds[0]).validate()
        self.probe.validate()

    def train_config(self, genotype, seed: int) -> TrainConfig:
        """The training configuration of one cell and seed."""
        return train_config(self, genotype, seed)

    @property
    def epochs(self) -> int:
        return int(self.train_config(self.genotype, self.seeds[0]).epochs)

    def probe_epochs(self, which: str = "epochs") -> list:
        """The probed epochs (``"final"`` resolved), sorted, distinct."""
        epochs = self.epochs
        return sorted({epochs if e == FINAL else min(int(e), epochs) for e in getattr(self.probe, which)})

    def identity(self) -> dict:
        """The settings that define the results (not the analysis)."""
        data = self.to_dict()
        data.pop("analysis")
        return data

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StudySettings":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["probe"] = _known(ProbeSettings, values.get("probe", {}))
        values["analysis"] = _known(AnalysisSettings, values.get("analysis", {}))
        return cls(**values)


def _known(cls, data: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (data or {}).items() if k in names})


def train_config(settings: StudySettings, genotype, seed: int) -> TrainConfig:
    """``settings``' preset and overrides for ``genotype`` (a Genotype, a
    StudyCell or a spec) and ``seed``, on the study's data."""
    if isinstance(genotype, StudyCell):
        genotype = genotype.to_genotype()
    config = TrainConfig.from_preset(settings.preset, dataset=settings.dataset,
                                     data_dir=settings.data_dir, seed=int(seed),
                                     deterministic=bool(settings.deterministic),
                                     **settings.overrides)
    if isinstance(genotype, Genotype):
        config.genotype = genotype.name or "custom"
        config.genotype_resolved = {**genotype.to_dict(), "name": genotype.name}
    else:
        config.genotype = str(genotype)
    return config


def _designed(base: Genotype, settings: StudySettings) -> list:
    """(genotype, role) of the variants and rewirings the design asks for."""
    out = []
    for design in settings.variants:
        if design == "stratified":
            out += [(g, "variant") for g in stratified_variants(
                base, settings.per_band, settings.bands, settings.design_seed)]
        elif design in VARIANT_KINDS:
            out += [(g, "variant") for g in make_variants(base, design, settings.variant_seeds)]
        elif design == "widest":
            out.append((widest_rewiring(base), "rewiring"))
        elif design == "deepest":
            out.append((deepest_rewiring(base), "rewiring"))
    return out


def choose_cells(settings: StudySettings, num_classes: int = 10) -> list:
    """The study's cells: the base genotype first, then the designed
    variants, then the ``compare`` list, each once (by name)."""
    try:
        base = resolve_genotype(settings.genotype)
    except GenotypeError as err:
        raise StudyError(f"--genotype: {err}") from None
    base = base if base.name else base.with_name("base")
    chosen = [(base, "base")] + _designed(base, settings)
    for spec in settings.compare:
        try:
            chosen.append((resolve_genotype(spec), "compare"))
        except GenotypeError as err:
            raise StudyError(f"--compare {spec}: {err}") from None
    config = settings.train_config(base, settings.seeds[0])
    cells, names = [], set()
    for genotype, role in chosen:
        genotype = genotype if genotype.name else genotype.with_name(f"cell{len(cells)}")
        if genotype.name in names:
            continue
        names.add(genotype.name)
        cells.append(StudyCell.from_genotype(genotype, role, config.init_channels, config.layers,
                                             num_classes))
    return cells


def run_name(cell: str, seed: int) -> str:
    """The run directory of a cell and training seed, under ``runs/``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in cell)
    return f"{safe}-s{int(seed)}"


class Manifest:
    """``study.json`` of a study directory: settings, cells, runs, timings."""

    def __init__(self, study_dir: str):
        self.dir = os.path.abspath(os.path.expanduser(study_dir))
        self.path = os.path.join(self.dir, MANIFEST)
        self.data = {}

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def load(self) -> "Manifest":
        import json
        try:
            with open(self.path, encoding="utf-8") as fh:
                self.data = json.load(fh)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path} not found (not a study directory?)") from None
        except json.JSONDecodeError as err:
            raise StudyError(f"{self.path} is not valid JSON: {err}") from None
        return self

    @property
    def settings(self) -> StudySettings:
        return StudySettings.from_dict(self.data["settings"])

    @property
    def cells(self) -> list:
        return [StudyCell(**c) for c in self.data["cells"]]

    @property
    def runs(self) -> list:
        """``[{"cell", "seed", "run_dir"}]`` (run_dir relative to the study)."""
        return list(self.data["runs"])

    def run_dir(self, run: dict) -> str:
        return os.path.join(self.dir, run["run_dir"])

    def create(self, settings: StudySettings, cells: list) -> None:
        runs = [{"cell": c.name, "seed": int(s), "run_dir": os.path.join("runs", run_name(c.name, s))}
                for c in cells for s in settings.seeds]
        self.data = {"version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "settings": settings.to_dict(), "cells": [asdict(c) for c in cells],
                     "runs": runs, "sessions": []}
        os.makedirs(self.dir, exist_ok=True)
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def differences(self, settings: StudySettings) -> list:
        """``(field, stored, given)`` where ``settings`` would change the
        study's results (the analysis may change)."""
        return _diff(self.settings.identity(), settings.identity())

    def record_session(self, session: dict) -> None:
        self.data.setdefault("sessions", []).append(session)
        self.save()


def _diff(stored, given, prefix: str = "") -> list:
    if isinstance(stored, dict) and isinstance(given, dict):
        out = []
        for key in sorted(set(stored) | set(given)):
            out += _diff(stored.get(key), given.get(key), f"{prefix}{key}.")
        return out
    return [] if stored == given else [(prefix.rstrip("."), stored, given)]
