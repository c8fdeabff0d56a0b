"""The jobs of a study and their state on disk.

A study is a list of :class:`Job`\\ s: one ``train`` job per cell and seed
(a training run directory under ``runs/``), then one ``probe`` job per
probed epoch of that run.  :func:`run_job` runs one, in any process (this
one, a pool worker, a Ray task): everything it needs is in the study
directory, and it is idempotent -- a finished job returns at once, an
interrupted training resumes from its last checkpoint, an interrupted
landscape from its grid file.

State: ``status/<job>.json`` (``running`` with host and pid, ``done``
with the seconds the work took, ``failed`` with the error), written
atomically; a job whose outputs exist is done whatever its status file says.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass

from tfnas.files import atomic_write_json
from tfnas.rundir import RunDir
from tfnas.study.design import Manifest, StudySettings
from tfnas.study.probing import probe_path, probe_run

__all__ = ["Job", "plan_jobs", "run_job", "job_done", "read_status", "STATUS_DIR"]

STATUS_DIR = "status"


@dataclass(frozen=True)
class Job:
    """``kind`` train or probe; the run (cell, seed, run_dir relative to
    the study); the probed ``epoch`` (probe jobs)."""

    kind: str
    cell: str
    seed: int
    run_dir: str
    epoch: int = 0
    landscape: bool = False

    @property
    def id(self) -> str:
        base = f"{self.kind}-{os.path.basename(self.run_dir)}"
        return base if self.kind == "train" else f"{base}-e{self.epoch:03d}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "cell": self.cell, "seed": self.seed, "run_dir": self.run_dir,
                "epoch": self.epoch, "landscape": self.landscape, "id": self.id}


def plan_jobs(manifest: Manifest) -> list:
    """``[(train job, [probe jobs])]`` of every run of the study."""
    settings = manifest.settings
    landscape_epochs = set(settings.probe_epochs("landscape_epochs"))
    epochs = sorted(set(settings.probe_epochs()) | landscape_epochs)
    plan = []
    for run in manifest.runs:
        train = Job("train", run["cell"], int(run["seed"]), run["run_dir"])
        probes = [Job("probe", run["cell"], int(run["seed"]), run["run_dir"], e, e in landscape_epochs)
                  for e in epochs]
        plan.append((train, probes))
    return plan


def _epochs_done(run_dir: str) -> int:
    if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        return 0
    return max((int(r.get("epoch", 0)) for r in RunDir(run_dir, create=False).read_metrics()), default=0)


def job_done(study_dir: str, job: Job, settings: StudySettings) -> bool:
    """Whether ``job``'s outputs exist (a finished training, a probe file)."""
    run_dir = os.path.join(study_dir, job.run_dir)
    if job.kind == "train":
        return _epochs_done(run_dir) >= settings.epochs
    return os.path.isfile(probe_path(run_dir, job.epoch))


def status_path(study_dir: str, job: Job) -> str:
    return os.path.join(study_dir, STATUS_DIR, f"{job.id}.json")


def _write_status(study_dir: str, job: Job, state: str, **extra) -> None:
    os.makedirs(os.path.join(study_dir, STATUS_DIR), exist_ok=True)
    atomic_write_json(status_path(study_dir, job),
                      {"job": job.to_dict(), "state": state, "host": socket.gethostname(),
                       "pid": os.getpid(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})


def read_status(study_dir: str, job: Job) -> dict | None:
    import json
    try:
        with open(status_path(study_dir, job), encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _train(study_dir: str, job: Job, settings: StudySettings, manifest: Manifest, log) -> dict:
    from tfnas.training import train
    cell = next(c for c in manifest.cells if c.name == job.cell)
    run_dir = os.path.join(study_dir, job.run_dir)
    resume = os.path.isfile(os.path.join(run_dir, "config.json"))
    config = settings.train_config(cell, job.seed)
    keep = settings.probe_epochs() + settings.probe_epochs("landscape_epochs")
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "train.log"), "a", encoding="utf-8") as own_log:
        summary = train(config, run_dir, resume=resume, log=log or own_log, keep_epochs=keep)
    return {"epochs_done": summary["epochs_done"], "resumed": resume}


def run_job(study_dir: str, job: Job, log=None, threads: int | None = None) -> dict:
    """Run ``job`` of the study in ``study_dir`` unless it is done; returns
    ``{"job", "state", "seconds", "skipped"}``.  Errors are recorded in the
    job's status file and raised again.  ``threads``: TensorFlow's intra-op
    threads (set before its first op only; a deterministic study uses one)."""
    manifest = Manifest(study_dir).load()
    settings = manifest.settings
    if job_done(study_dir, job, settings):
        return {"job": job.id, "state": "done", "seconds": 0.0, "skipped": True}
    if threads is None and settings.deterministic:
        # A reduction's result depends on how many threads split it: one
        # intra-op thread everywhere (this process, a pool, Ray) gives the
        # same numbers on every path.
        threads = 1
    if threads:
        from tfnas import runtime
        runtime.configure_threads(threads, None)
    if settings.deterministic:
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    _write_status(study_dir, job, "running")
    t0 = time.time()
    try:
        if job.kind == "train":
            detail = _train(study_dir, job, settings, manifest, log)
        else:
            result = probe_run(os.path.join(study_dir, job.run_dir), job.epoch, settings.probe,
                               job.landscape, settings.probe.split)
            detail = {"probe_seconds": result["seconds"]}
    except BaseException as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _write_status(study_dir, job, "failed", error=f"{type(err).__name__}: {message}",
                      traceback=traceback.format_exc(limit=8), seconds=time.time() - t0)
        raise
    finally:
        _release_memory()
    seconds = time.time() - t0
    _write_status(study_dir, job, "done", seconds=seconds, **detail)
    return {"job": job.id, "state": "done", "seconds": seconds, "skipped": False}


def _release_memory() -> None:
    """Drop the job's models and traced functions (a process runs many jobs)."""
    if "keras" in sys.modules:
        import gc
        import keras
        keras.utils.clear_session(free_memory=True)
        gc.collect()
