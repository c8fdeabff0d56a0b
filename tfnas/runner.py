"""The run driver: one loop of epochs for training and for every search method.

A run is a :class:`~tfnas.rundir.RunDir` plus a *task* that knows how to
run one epoch.  The driver does everything else, the same way for all:

- :func:`open_run`: a new run writes its ``config.json`` (an occupied
  directory is refused); ``resume`` reads the stored config back and keeps
  only the fields the caller may change (e.g. ``epochs``);
- :meth:`RunDriver.restore`: restores the latest checkpoint (refused with a
  clear message if it belongs to another model: ``meta``), the Python and
  NumPy RNG states, and drops metrics written after it;
- :meth:`RunDriver.run`: per epoch, the task's epoch under a
  :class:`~tfnas.progress.Progress` display, the divergence guard (a loss
  that is not finite stops the run; the last good checkpoint stays),
  ``metrics.jsonl`` (``epoch`` counts epochs done, from 1), TensorBoard
  scalars of every number in the record plus the task's own summaries, an
  atomic checkpoint, and one line on the log.

A task (see :class:`EpochTask`) provides ``trackables()``,
``run_epoch(epoch, progress) -> record``, ``epoch_line(record)`` and
optionally ``write_summaries(record, step)`` (inside the run's TensorBoard
writer) and ``after_epoch(run, record)`` (files of its own).
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Protocol

import tensorflow as tf

from tfnas.progress import Progress
from tfnas.rundir import CheckpointError, RunDir, capture_python_rng, restore_python_rng

__all__ = ["DivergedError", "EpochTask", "RunDriver", "open_run", "log_line"]


class DivergedError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class EpochTask(Protocol):
    tensorboard_name: str

    def trackables(self) -> dict: ...

    def run_epoch(self, epoch: int, progress: Progress) -> dict: ...

    def epoch_line(self, record: dict) -> str: ...


def log_line(stream, text: str) -> None:
    """Print one line to ``stream`` (``None``: silent)."""
    if stream is not None:
        print(text, file=stream, flush=True)


def open_run(out_dir: str, config, *, resume: bool, from_dict: Callable, may_change=("epochs",),
             what: str = "run") -> tuple:
    """``(RunDir, config)`` of a new or resumed run.

    New: the directory must not hold a run yet (metrics or a checkpoint);
    ``config`` is written.  Resumed: the stored config is read back with
    ``from_dict``, and the fields of ``may_change`` that ``config`` sets
    (not ``None``, 0 or empty) override it."""
    run = RunDir(out_dir)
    if resume:
        if not os.path.isfile(run.config_path):
            raise FileNotFoundError(f"cannot resume: {run.config_path} not found")
        stored = from_dict(run.read_config())
        for name in may_change:
            value = getattr(config, name, None) if config is not None else None
            if value:
                setattr(stored, name, value)
        return run, stored
    if run.read_metrics() or run.has_checkpoint():
        raise CheckpointError(f"{run.path} already holds a {what}; pass --resume to continue it "
                              f"or choose another --out")
    return run, config


def _scalar_tag(key: str) -> str:
    """TensorBoard tag of a record key: ``train_loss`` -> ``train/train_loss``."""
    prefix = key.split("_", 1)[0]
    group = prefix if prefix in ("train", "test", "validation", "eval", "alpha", "normal",
                                 "reduce", "controller", "sampled") else "epoch"
    return f"{group}/{key}"


def _non_finite_losses(record: dict) -> list:
    return [k for k, v in record.items()
            if k.endswith("loss") and isinstance(v, float) and not math.isfinite(v)]


class RunDriver:
    """Drives a task's epochs in ``run`` (see the module docstring).

    ``meta`` is what a checkpoint must match to be resumed; ``log`` gets one
    line per epoch (``None``: silent; a non-chief worker); ``summaries``
    False writes no TensorBoard events (a non-chief worker).  The newest
    ``keep_checkpoints`` checkpoints are kept, and those of the epochs in
    ``keep_epochs`` (counted from 1) for good."""

    def __init__(self, run: RunDir, *, epochs: int, meta: dict, log=None, summaries: bool = True,
                 keep_checkpoints: int = 2, keep_epochs=()):
        self.run, self.epochs, self.meta = run, int(epochs), meta
        self.log, self.summaries, self.keep = log, summaries, keep_checkpoints
        self.keep_epochs = tuple(int(e) for e in keep_epochs)
        self.history: list = []

    def restore(self, trackables: dict, resume: bool) -> int:
        """Restore the latest checkpoint into ``trackables`` when resuming;
        returns the number of epochs already done."""
        if not resume:
            return 0
        state = self.run.restore_checkpoint(trackables, expect=self.meta)
        if state is None:   # stopped before its first checkpoint: start again, same config
            self.run.rewind_metrics("epoch", 0)
            log_line(self.log, f"no checkpoint in {self.run.checkpoint_dir} yet; starting from epoch 1")
            return 0
        done = int(state["epoch"])
        restore_python_rng(state.get("python_rng"))
        self.run.rewind_metrics("epoch", done)
        self.history = [r for r in self.run.read_metrics() if "epoch" in r]
        log_line(self.log, f"resumed from {self.run.latest_checkpoint()} "
                           f"(epoch {done} of {self.epochs})")
        return done

    def run_epochs(self, task, start: int, end: int | None = None) -> list:
        """Run epochs ``start`` .. ``end - 1`` (0-based; default: to the
        configured count); returns every record of the run."""
        end = self.epochs if end is None else min(end, self.epochs)
        for epoch in range(start, end):
            self._one_epoch(task, epoch, first=epoch == start)
        self.run.close()
        return self.history

    def _one_epoch(self, task, epoch: int, first: bool) -> None:
        t0 = time.time()
        # Only the run's first epoch traces its steps: say how long that took.
        slow_start = getattr(task, "slow_start", 20.0) if first else None
        progress = Progress(self.log, f"epoch {epoch + 1}/{self.epochs}", slow_start=slow_start,
                            report_finish=False) if self.log else None
        try:
            record = task.run_epoch(epoch, progress)
            bad = _non_finite_losses(record)
            if bad:
                raise DivergedError(f"{bad[0]} is {record[bad[0]]}")
        except DivergedError as err:
            good = self.run.latest_checkpoint()
            where = f"the last good checkpoint is {good}" if good else "no checkpoint was written yet"
            raise DivergedError(f"the loss diverged in epoch {epoch + 1} ({err}); stopped; {where} "
                                f"(try a lower learning rate or gradient clip)") from None
        finally:
            if progress is not None:
                progress.finish()
        record = {"epoch": epoch + 1, **record, "seconds": time.time() - t0}
        if self.summaries:
            self._write_summaries(task, record)
        self.run.append_metrics(record)
        if hasattr(task, "after_epoch"):
            task.after_epoch(self.run, record)
        state = {"epoch": epoch + 1, "meta": self.meta, "python_rng": capture_python_rng(),
                 **(task.checkpoint_state() if hasattr(task, "checkpoint_state") else {})}
        self.run.save_checkpoint(task.trackables(), state, step=epoch + 1, keep=self.keep,
                                 keep_steps=self.keep_epochs)
        self.history.append(record)
        log_line(self.log, task.epoch_line(record))

    def _write_summaries(self, task, record: dict) -> None:
        writer = self.run.tensorboard_writer(getattr(task, "tensorboard_name", ""))
        step = record["epoch"]
        with writer.as_default(step=step):
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    tf.summary.scalar(_scalar_tag(key), value)
            if hasattr(task, "write_summaries"):
                task.write_summaries(record, step)
        writer.flush()
