"""The search driver: any :class:`~tfnas.search.base.SearchMethod` on the run driver.

:func:`run_search` is what ``search.py`` calls.  It knows no algorithm: the
method (``settings.method``) runs the epochs; the driver writes, into a
:class:`tfnas.rundir.RunDir`,

- ``config.json`` (the settings) and ``metrics.jsonl`` (one record per
  epoch, ``epoch`` counting epochs done from 1: the method's metrics, the
  derived genotype, its width and depth, and the method's extras),
- ``genotype.json`` / ``genotype.txt`` (the latest derived genotype, JSON
  and DARTS repr) and ``genotypes/epoch_NNN.json``,
- ``tb/search/`` (scalars, the genotype as text, cell diagrams, and the
  method's own summaries),
- ``checkpoints/`` (what the method's ``trackables()`` lists; atomic).
"""

from __future__ import annotations

import json
import os
import sys

import keras
import tensorflow as tf

from tfnas.data import open_dataset
from tfnas.files import atomic_write_text
from tfnas.genotypes import Genotype
from tfnas.rundir import CheckpointError, RunDir
from tfnas.runner import RunDriver, log_line, open_run
from tfnas.search.base import SearchData, method_class
from tfnas.search.derive import genotype_record
from tfnas.search.settings import SearchSettings
from tfnas.training import make_strategy

__all__ = ["run_search", "build_method", "SEARCH_NOTE"]

SEARCH_NOTE = ("search accuracy is not final accuracy: re-train the derived cell from scratch "
               "with train.py")


class SearchTask:
    """One search epoch for the run driver: the method's epoch, then its
    genotype (files, width and depth, TensorBoard)."""

    tensorboard_name = "search"
    slow_start = 0.0     # always say how long the first (traced) step took

    def __init__(self, method, settings: SearchSettings):
        self.method, self.settings = method, settings
        self.genotype = None

    def trackables(self) -> dict:
        return self.method.trackables()

    def run_epoch(self, epoch: int, progress) -> dict:
        metrics = self.method.run_epoch(epoch, progress)
        self.genotype = self.method.derive().with_name(f"search-epoch{epoch + 1}")
        return {**metrics, **genotype_record(self.genotype), **self.method.epoch_extras()}

    def after_epoch(self, run, record: dict) -> None:
        os.makedirs(os.path.join(run.path, "genotypes"), exist_ok=True)
        text = json.dumps(self.genotype.to_dict(), indent=2) + "\n"
        atomic_write_text(os.path.join(run.path, "genotypes", f"epoch_{record['epoch']:03d}.json"), text)
        atomic_write_text(os.path.join(run.path, "genotype.json"), text)
        atomic_write_text(os.path.join(run.path, "genotype.txt"), self.genotype.to_repr() + "\n")

    def write_summaries(self, record: dict, step: int) -> None:
        tf.summary.text("genotype", f"`{self.genotype.to_repr()}`")
        from tfnas.diagrams import cell_figure_png_bytes   # Matplotlib only when summaries are written
        for kind in ("normal", "reduce"):
            png = cell_figure_png_bytes(self.genotype.cell(kind), title=f"{kind} cell, epoch {step}")
            tf.summary.image(f"cell_{kind}", tf.image.decode_png(png, channels=3)[None])
        self.method.write_summaries(record, step)

    def epoch_line(self, record: dict) -> str:
        return (f"epoch {record['epoch']}/{self.settings.epochs}: {self.method.epoch_line(record)}  "
                f"normal cell width {record['normal_width']:g}c depth {record['normal_depth']}  "
                f"({record['seconds']:.0f} s)\n  genotype: {record['repr']}")


def build_method(settings: SearchSettings, info, strategy=None):
    """The method of ``settings`` with its networks built (inside the strategy's scope)."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        return method_class(settings.method)(settings, info, strategy)


def _migrate_legacy_run(run, raw_config: dict) -> None:
    """Runs written before the run driver counted search epochs from 0 in
    ``metrics.jsonl`` and kept DARTS settings under ``darts``: shift the
    epochs and rewrite the config in today's form (once)."""
    if "darts" not in raw_config or "method_config" in raw_config:
        return
    records = run.read_metrics()
    atomic_write_text(run.metrics_path, "".join(
        json.dumps({**r, "epoch": r["epoch"] + 1} if "epoch" in r else r) + "\n" for r in records))
    run.write_config(SearchSettings.from_dict(raw_config).to_dict())


def _summary(run, settings: SearchSettings, history: list) -> dict:
    if not history:
        raise CheckpointError(f"{run.path}: nothing to do and no metrics")
    record = history[-1]
    genotype = Genotype.from_dict(record["genotype"])
    genotype_path = os.path.join(run.path, "genotype.json")
    return {"run_dir": run.path, "method": settings.method, "genotype": genotype.to_dict(),
            "repr": genotype.to_repr(), "genotype_file": genotype_path,
            **{k: record[k] for k in ("normal_width", "normal_depth", "reduce_width", "reduce_depth")},
            "epochs": settings.epochs,
            "final": {k: v for k, v in record.items() if isinstance(v, (int, float))},
            "train_command": f"python train.py --genotype {genotype_path} --dataset {settings.dataset} "
                             f"--preset paper",
            "note": SEARCH_NOTE}


def run_search(settings: SearchSettings | None, out_dir: str, *, resume: bool = False,
               log=None) -> dict:
    """Run (or resume) the search of ``settings`` in ``out_dir``; returns a
    summary dict.  Resuming uses the stored settings (``settings.epochs``,
    if given, may change)."""
    log = log or sys.stdout
    if resume and os.path.isfile(os.path.join(out_dir, "config.json")):
        stored = RunDir(out_dir)
        _migrate_legacy_run(stored, stored.read_config())
    run, settings = open_run(out_dir, settings, resume=resume, from_dict=SearchSettings.from_dict,
                             what="search")
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(settings.seed)
    strategy = make_strategy(settings.strategy)
    cls = method_class(settings.method)
    data = open_dataset(settings.dataset, settings.data_dir, validation=cls.validation_size(settings))
    method = build_method(settings, data.info, strategy)
    driver = RunDriver(run, epochs=settings.epochs, meta=settings.checkpoint_meta(), log=log)
    start = driver.restore(method.trackables(), resume)
    if not resume:
        run.write_config(settings.to_dict())
    log_line(log, f"{method.describe()} on {data.info.name}: {settings.epochs} epochs, batch "
                  f"{settings.batch_size}; run directory {run.path}")
    remaining = range(start, settings.epochs)
    if len(remaining):
        method.open_streams(SearchData(data, settings, strategy, remaining))
        # Otherwise the screen stays silent for minutes before the first progress line.
        log_line(log, "compiling the search step: the first step traces and optimises the whole "
                      "network's graph, which takes minutes on a CPU; later steps are much faster")
    history = driver.run_epochs(SearchTask(method, settings), start)
    return _summary(run, settings, history)
