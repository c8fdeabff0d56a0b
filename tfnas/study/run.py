"""A study, end to end: :func:`run_study` (design -> jobs -> report) and
:func:`study_status` (what is done, running, interrupted, failed).

One study is one directory::

    study.json                the manifest: settings, cells, runs, sessions (timings)
    runs/<cell>-s<seed>/      a training run (config, metrics, checkpoints, tb/),
        study-probes/         its probes, one JSON per epoch (+ landscape grids)
    status/<job>.json         state of every job
    figures/                  PNG and SVG
    report.md, report.html, report.json
    tb-hparams/               the TensorBoard HParams experiment

Running it again skips what is done and resumes what was interrupted.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from tfnas.study.design import Manifest, StudyError, StudySettings, choose_cells
from tfnas.study.jobs import job_done, plan_jobs, read_status

__all__ = ["open_study", "run_study", "study_status"]


def open_study(out_dir: str, settings: StudySettings | None, given=None) -> Manifest:
    """The study in ``out_dir``: created from ``settings``, or the existing
    one.  ``settings`` may then only repeat it, except for the analysis;
    ``given`` (a set of top-level field names, e.g. the flags a user typed)
    limits the check and the analysis update to those fields: the stored
    study keeps the others.  ``None``: every field counts."""
    manifest = Manifest(out_dir)
    if manifest.exists():
        manifest.load()
        if settings is not None:
            changed = [d for d in manifest.differences(settings)
                       if given is None or d[0].split(".")[0] in given]
            if changed:
                listed = "; ".join(f"{k}: {a!r} in the study, {b!r} now" for k, a, b in changed[:4])
                raise StudyError(f"{manifest.dir} is a study with other settings ({listed}); "
                                 f"choose another --out or leave those flags out")
            if given is None or "analysis" in given:
                manifest.data["settings"]["analysis"] = settings.to_dict()["analysis"]
                manifest.save()
        return manifest
    if settings is None:
        raise StudyError(f"{manifest.dir} holds no study ({manifest.path} not found): give its design")
    settings.validate()
    manifest.create(settings, choose_cells(settings))
    return manifest


def _execute(manifest, plan, workers, ray, threads, log):
    from tfnas.study import executors
    if ray:
        return executors.run_ray(manifest.dir, plan, None if ray == "local" else ray, log, threads)
    if workers > 1:
        return executors.run_pool(manifest.dir, plan, workers, log, threads)
    return executors.run_sequential(manifest.dir, plan, log, threads)


def run_study(out_dir: str, settings: StudySettings | None = None, *, given=None, workers: int = 1,
              ray: str | None = None, threads: int | None = None, log=sys.stdout,
              report: bool = True) -> dict:
    """Run (or continue) the study in ``out_dir`` and write its report.

    ``workers`` > 1: a local process pool; ``ray``: a Ray cluster address
    (``"auto"``; ``"local"`` for the instance this process started).
    Returns ``{"manifest", "results", "session", "report"}``."""
    t0 = time.time()
    manifest = open_study(out_dir, settings, given)
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
               "pid": os.getpid(), "executor": "ray" if ray else ("pool" if workers > 1 else "sequential"),
               "workers": workers, "finished": None}
    manifest.record_session(session)
    index = len(manifest.data["sessions"]) - 1
    plan = plan_jobs(manifest)
    todo = sum(not job_done(manifest.dir, j, manifest.settings) for t, p in plan for j in [t] + p)
    _say(log, f"study {manifest.dir}: {len(manifest.cells)} cells, {len(manifest.runs)} runs, "
              f"{sum(1 + len(p) for _, p in plan)} jobs ({todo} to do)")
    t_jobs = time.time()
    results = _execute(manifest, plan, workers, ray, threads, log)
    jobs_wall = time.time() - t_jobs
    written = None
    t_report = time.time()
    if report:
        from tfnas.study.report import write_report
        written = write_report(manifest.dir, log=log)
    manifest.load()
    wall = time.time() - t0
    work = sum(r["seconds"] for r in results if r["state"] == "done")
    session.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), wall_seconds=wall,
                   jobs_wall_seconds=jobs_wall, job_seconds=work,
                   train_seconds=sum(r["seconds"] for r in results if r["job"].startswith("train-")),
                   probe_seconds=sum(r["seconds"] for r in results if r["job"].startswith("probe-")),
                   report_seconds=time.time() - t_report if report else 0.0,
                   jobs_run=sum(1 for r in results if r["state"] == "done" and not r.get("skipped")),
                   jobs_failed=sum(1 for r in results if r["state"] == "failed"))
    if workers <= 1 and not ray:   # one job at a time: the rest of the wall time is overhead
        session["overhead_seconds"] = wall - work
        session["overhead_fraction"] = (wall - work) / wall if wall > 0 else 0.0
    manifest.data["sessions"][index] = session
    manifest.save()
    failed = [r for r in results if r["state"] == "failed"]
    _say(log, f"study done in {wall:.0f} s ({session['jobs_run']} jobs run, {len(failed)} failed)"
         + (f"; report: {written['html']}" if written else ""))
    return {"manifest": manifest, "results": results, "session": session, "report": written}


def _say(log, text):
    if log is not None:
        print(text, file=log, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def _state(manifest, job) -> dict:
    status = read_status(manifest.dir, job) or {}
    if job_done(manifest.dir, job, manifest.settings):
        return {"state": "done", "seconds": status.get("seconds")}
    state = status.get("state", "pending")
    if state == "running" and status.get("host") == socket.gethostname() and not _pid_alive(status["pid"]):
        state = "interrupted"
    if state == "done":   # its outputs are gone or incomplete
        state = "pending"
    return {"state": state, "since": status.get("time"), "error": status.get("error"),
            "host": status.get("host")}


def study_status(out_dir: str) -> dict:
    """``{"study", "jobs": [{"job", "kind", "cell", "seed", "state", ...}],
    "counts": {state: n}, "runs": [{"run", "epochs_done", "epochs"}]}``."""
    from tfnas.rundir import RunDir
    manifest = Manifest(out_dir).load()
    settings = manifest.settings
    jobs, runs = [], []
    for train, probes in plan_jobs(manifest):
        for job in [train] + probes:
            jobs.append({"job": job.id, "kind": job.kind, "cell": job.cell, "seed": job.seed,
                         "epoch": job.epoch or None, **_state(manifest, job)})
        run_dir = os.path.join(manifest.dir, train.run_dir)
        metrics = RunDir(run_dir, create=False).read_metrics() if os.path.isdir(run_dir) else []
        runs.append({"run": train.run_dir, "epochs_done": max((m.get("epoch", 0) for m in metrics), default=0),
                     "epochs": settings.epochs})
    counts = {}
    for job in jobs:
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    return {"study": manifest.dir, "jobs": jobs, "counts": counts, "runs": runs,
            "sessions": manifest.data.get("sessions", []),
            "report": os.path.join(manifest.dir, "report.html")
            if os.path.isfile(os.path.join(manifest.dir, "report.html")) else None}
