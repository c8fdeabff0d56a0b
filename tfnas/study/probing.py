"""The probes of one trained model of a study, at one epoch.

:func:`probe_run` loads a checkpoint of a training run
(:func:`tfnas.loading.load_trained_model`), takes a seeded sample of a split
(the same images for every cell and epoch), and measures, BN in inference mode and drop
path off (the model as evaluated; it is never changed):

- ``hessian``: lambda_max, lambda_min and lambda_min / lambda_max (Li et
  al.'s ratio) from one Lanczos run, each with its residual, and the
  trace by Hutchinson with its standard error -- over the weights of rank
  > 1 (the authors' landscape code: biases and BN parameters excluded) or
  all trainable variables.  The loss is the mean cross-entropy over the
  probed images (HVPs averaged over batches, not summed as the authors'
  code did: their values are ours times the number of batches);
- ``gradient_variance``: E||g_i - g_bar||, E||g_i - g_bar||^2 and ||g_bar||
  over the mini-batch gradients of all trainable parameters (its batch
  size is stated in the result);
- ``landscape`` (epochs of ``landscape_epochs``): a 2-D filter-normalised
  loss landscape with the gradient variance at every point, resumable from
  its ``.npz`` checkpoint.

Everything goes into one JSON file per epoch (written atomically, with the
seconds each part took).
"""

from __future__ import annotations

import os
import time
import warnings

from tfnas.files import atomic_write_json
from tfnas.rundir import RunDir

__all__ = ["PROBE_DIR", "probe_path", "landscape_path", "probe_run", "probe_data"]

PROBE_DIR = "study-probes"


def probe_path(run_dir: str, epoch: int) -> str:
    return os.path.join(run_dir, PROBE_DIR, f"epoch-{int(epoch):03d}.json")


def landscape_path(run_dir: str, epoch: int) -> str:
    return os.path.join(run_dir, PROBE_DIR, f"landscape-epoch-{int(epoch):03d}.npz")


def probe_data(config: dict, split: str, sizes, batch_size: int, seed: int = 0) -> list:
    """For each image count in ``sizes`` (``None``: all), that many images of
    ``split`` of the run's data set (a seeded sample, the same for every cell
    and epoch) as a list of eager ``(x, y)`` batches; the data set is opened
    once."""
    from tfnas.data import open_dataset
    from tfnas.probes import as_batches
    source = open_dataset(config["dataset"], config.get("data_dir"), validation=config.get("validation", 0))
    return [as_batches(source.sample(split, n, batch_size, seed)) for n in sizes]


def _loss():
    import keras
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _hessian(model, batches, probe) -> dict:
    from tfnas.probes import HessianProbe, ProbeWarning
    variables = [v for v in model.trainable_variables if len(v.shape) > 1] \
        if probe.hessian_weights == "rank2" else None
    hessian = HessianProbe(model, _loss(), batches, variables=variables, seed=probe.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeWarning)   # recorded as "converged": False
        extremes = hessian.extremes(max_iter=probe.hessian_iter, tol=probe.hessian_tol)
        top = hessian.eigenvalues(top_n=probe.top_n, max_iter=probe.hessian_iter,
                                  tol=probe.hessian_tol, which="LA") if probe.top_n > 1 else None
        top_result = hessian.last_result if top is not None else None
        trace = hessian.trace(max_iter=probe.trace_iter, tol=probe.trace_tol)
    out = {"weights": probe.hessian_weights, "num_parameters": hessian.dim,
           "normalisation": "mean loss over the probed images (HVPs averaged over batches)",
           "extremes": extremes.to_dict(), "trace": trace.to_dict(), "hvps": hessian.num_hvps}
    if top_result is not None:
        out["top"] = top_result.to_dict()
    return out


def _landscape(model, batches, probe, checkpoint: str) -> dict:
    from tfnas.probes import loss_landscape
    land = loss_landscape(model, _loss(), batches, dims=2, num_points=probe.landscape_points,
                          span=(-probe.landscape_span, probe.landscape_span), seed=probe.seed,
                          with_gradient_variance=probe.landscape_gradvar, checkpoint=checkpoint,
                          resume=True)
    data = land.to_dict()
    data["meta"] = {k: v for k, v in data["meta"].items() if k != "variables"}
    return data


def probe_run(run_dir: str, epoch: int, probe, landscape: bool, split: str = "test") -> dict:
    """Probe the checkpoint of ``epoch`` of a training run; writes and
    returns the result (see the module docstring).  ``probe`` is a
    :class:`tfnas.study.design.ProbeSettings`."""
    from tfnas.loading import load_trained_model
    from tfnas.probes import gradient_variance
    t_start = time.time()
    run = RunDir(run_dir, create=False)
    checkpoint = run.checkpoint_path(epoch)
    loaded = load_trained_model(run_dir, checkpoint=checkpoint)
    model = loaded.model
    if hasattr(model, "drop_path_prob"):
        model.drop_path_prob.assign(0.0)
    sizes = [probe.images] + ([probe.landscape_images] if landscape and probe.landscape_images != probe.images
                              else [])
    samples = probe_data(loaded.config, split, sizes, probe.batch_size, probe.seed)
    batches = samples[0]
    result = {"run_dir": os.path.abspath(run_dir), "epoch": int(epoch), "checkpoint": checkpoint,
              "split": split, "num_examples": sum(int(x.shape[0]) for x, _ in batches),
              "batch_size": probe.batch_size, "bn_mode": "inference", "seconds": {}}
    t0 = time.time()
    result["hessian"] = _hessian(model, batches, probe)
    result["seconds"]["hessian"] = time.time() - t0
    t0 = time.time()
    result["gradient_variance"] = gradient_variance(model, _loss(), batches)
    result["seconds"]["gradient_variance"] = time.time() - t0
    if landscape:
        t0 = time.time()
        land_batches = samples[-1]
        os.makedirs(os.path.dirname(landscape_path(run_dir, epoch)), exist_ok=True)
        result["landscape"] = _landscape(model, land_batches, probe, landscape_path(run_dir, epoch))
        result["landscape"]["num_examples"] = sum(int(x.shape[0]) for x, _ in land_batches)
        result["seconds"]["landscape"] = time.time() - t0
    result["seconds"]["total"] = time.time() - t_start
    path = probe_path(run_dir, epoch)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_json(path, result)
    return result
