"""Where a study's jobs run: this process, a local process pool, or Ray.

- :func:`run_sequential`: one job at a time in this process (the default
  on a CPU);
- :func:`run_pool`: ``workers`` spawned processes; each takes one GPU
  (``CUDA_VISIBLE_DEVICES``) when the machine has GPUs, else an equal
  share of the CPU's threads; a cell's probes are submitted when its
  training ends;
- :func:`run_ray`: every job a Ray task (one GPU each when the cluster has
  GPUs) on an existing cluster (``address``, or ``"auto"``; or the Ray
  instance this process already started), the probes depending on their
  training.  The study directory must be on a file system every node
  sees.  A worker that dies is retried by Ray (``max_retries``), and the
  retried job resumes from the run's last checkpoint.

Each returns ``[{"job", "state", "seconds", "skipped"|"error"}]`` in
completion order; a failed training skips its probes, other runs go on.
"""

from __future__ import annotations

import os
import subprocess

from tfnas.study.design import Manifest
from tfnas.study.jobs import job_done, run_job

__all__ = ["run_sequential", "run_pool", "run_ray", "local_gpus"]


def _say(log, text: str) -> None:
    if log is not None:
        print(text, file=log, flush=True)


def _line(result: dict) -> str:
    if result["state"] == "failed":
        return f"{result['job']}: FAILED ({result['error']})"
    if result.get("skipped"):
        return f"{result['job']}: already done"
    return f"{result['job']}: done in {result['seconds']:.0f} s"


def _failed(job, err) -> dict:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return {"job": job.id, "state": "failed", "seconds": 0.0, "error": f"{type(err).__name__}: {message}"}


def run_sequential(study_dir: str, plan: list, log=None, threads: int | None = None) -> list:
    results = []
    total = sum(1 + len(probes) for _, probes in plan)
    settings = Manifest(study_dir).load().settings
    for train, probes in plan:
        for job in [train] + probes:
            if not job_done(study_dir, job, settings):
                _say(log, f"[{len(results) + 1}/{total}] {job.id} ...")
            try:
                result = run_job(study_dir, job, threads=threads)
            except Exception as err:  # noqa: BLE001 - recorded; the other runs go on
                result = _failed(job, err)
            results.append(result)
            _say(log, f"[{len(results)}/{total}] " + _line(result))
            if result["state"] == "failed" and job is train:
                results += [_failed(p, RuntimeError(f"its training {train.id} failed")) for p in probes]
                break
    return results


# -- local process pool -----------------------------------------------------------

def local_gpus() -> list:
    """GPU ids of this machine (``CUDA_VISIBLE_DEVICES`` if set, else
    ``nvidia-smi -L``), without importing TensorFlow."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def _init_worker(devices, threads) -> None:
    """Pool worker start: take a GPU (or none), quiet TensorFlow."""
    gpu = devices.get() if devices is not None else None
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)
    from tfnas.runtime import quiet_tensorflow
    quiet_tensorflow()
    if threads:
        from tfnas import runtime
        runtime.configure_threads(threads, None)


def _pool_job(study_dir, job, threads):
    return run_job(study_dir, job, threads=threads)


def run_pool(study_dir: str, plan: list, workers: int, log=None, threads: int | None = None) -> list:
    import concurrent.futures as futures
    import multiprocessing
    context = multiprocessing.get_context("spawn")
    gpus = local_gpus()
    devices = None
    if gpus:
        devices = context.Queue()
        for i in range(workers):
            devices.put(gpus[i % len(gpus)])
    threads = threads or (None if gpus else max(1, (os.cpu_count() or 1) // workers))
    results, total = [], sum(1 + len(p) for _, p in plan)
    probes_of = {train.id: probes for train, probes in plan}
    with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(devices, threads)) as pool:
        pending = {pool.submit(_pool_job, study_dir, train, threads): train for train, _ in plan}
        while pending:
            done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                try:
                    result = future.result()
                except Exception as err:  # noqa: BLE001 - a failed job, or a lost worker
                    result = _failed(job, err)
                results.append(result)
                _say(log, f"[{len(results)}/{total}] " + _line(result))
                after = probes_of.get(job.id, []) if job.kind == "train" else []
                if result["state"] == "failed":
                    results += [_failed(p, RuntimeError(f"its training {job.id} failed")) for p in after]
                    continue
                for probe in after:
                    pending[pool.submit(_pool_job, study_dir, probe, threads)] = probe
    return results


# -- Ray --------------------------------------------------------------------------------

def _ray_job(study_dir, job, threads, *after):
    """A Ray task: one job (``after``: the results it waits for)."""
    from tfnas.runtime import quiet_tensorflow
    quiet_tensorflow()
    return run_job(study_dir, job, threads=threads)


def _connect_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install -e \".[ray]\"") from None
    if not ray.is_initialized():
        # Workers import tfnas from where this process does (a shared file
        # system, like the study directory).
        import tfnas
        root = os.path.dirname(os.path.dirname(os.path.abspath(tfnas.__file__)))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": path}},
                 log_to_driver=False)
    return ray


def run_ray(study_dir: str, plan: list, address: str | None = "auto", log=None,
            threads: int | None = None, cpus_per_task: int = 1, max_retries: int = 3) -> list:
    ray = _connect_ray(address)
    gpus = ray.cluster_resources().get("GPU", 0)
    options = {"num_gpus": 1} if gpus else {"num_cpus": cpus_per_task}
    task = ray.remote(max_retries=max_retries)(_ray_job).options(**options)
    threads = threads or (None if gpus else cpus_per_task)
    refs = {}
    for train, probes in plan:
        train_ref = task.remote(study_dir, train, threads)
        refs[train_ref] = train
        for probe in probes:
            refs[task.remote(study_dir, probe, threads, train_ref)] = probe
    results, total = [], len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        job = refs[done[0]]
        try:
            result = ray.get(done[0])
        except Exception as err:  # noqa: BLE001 - RayTaskError: the job (or its training) failed
            cause = getattr(err, "cause", None) or err
            result = _failed(job, cause)
        results.append(result)
        _say(log, f"[{len(results)}/{total}] " + _line(result))
    return results
