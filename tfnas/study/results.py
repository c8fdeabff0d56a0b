"""The per-cell table of a study, read from its directory (no TensorFlow).

:func:`collect` reads every run's ``metrics.jsonl`` and probe files and
returns ``{"runs": [...], "cells": [...], "curves": {...}, "derived": ...}``:

- per run: final and early test/train loss and accuracy, convergence speed
  (``epochs_to_target``: the first epoch whose test loss is at most the
  target; ``early_auc``: the mean test loss over epochs 1..early, the area
  under the early test-loss curve per epoch), and the probes of each
  probed epoch (``top_eigenvalue`` = lambda_max, ``lambda_min``,
  ``eigen_ratio``, ``trace``, ``gradient_variance`` = E||g_i - g_bar||, ...;
  ``<key>_e<epoch>`` for epochs other than the last);
- per cell: those numbers averaged over its seeds (``n_seeds``), with the
  cell's name, genotype, width, depth and parameters.

The target loss defaults to the highest of the runs' best test losses, so
that every run reaches it; it is stated in the result.
"""

from __future__ import annotations

import json
import math
import os

from tfnas.rundir import RunDir
from tfnas.study.design import Manifest
from tfnas.study.probing import probe_path

__all__ = ["collect", "PROBE_KEYS", "NUMERIC_KEYS"]

PROBE_KEYS = ("top_eigenvalue", "lambda_min", "eigen_ratio", "trace", "trace_standard_error",
              "gradient_variance", "gradient_sq_variance", "gradient_norm", "probe_loss",
              "hessian_converged", "unconverged")
NUMERIC_KEYS = ("final_test_acc", "final_test_loss", "final_train_acc", "final_train_loss",
                "early_test_acc", "early_test_loss", "early_auc", "epochs_to_target")


def _probe_row(result: dict) -> dict:
    hessian, gv = result.get("hessian", {}), result.get("gradient_variance", {})
    extremes, trace = hessian.get("extremes", {}), hessian.get("trace", {})
    return {"top_eigenvalue": extremes.get("lambda_max"), "lambda_min": extremes.get("lambda_min"),
            "eigen_ratio": extremes.get("ratio"), "trace": trace.get("estimate"),
            "trace_standard_error": trace.get("standard_error"),
            "gradient_variance": gv.get("mean_norm_deviation"),
            "gradient_sq_variance": gv.get("mean_sq_deviation"),
            "gradient_norm": gv.get("mean_gradient_norm"),
            "hessian_converged": extremes.get("converged"),
            "unconverged": sorted(k for k, r in extremes.get("residuals", {}).items()
                                  if r is not None and not r <= extremes.get("tol", 0.0)),
            "top_eigenvalues": hessian.get("top", {}).get("eigenvalues")}


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _curve(metrics: list, key: str) -> list:
    return [(int(m["epoch"]), float(m[key])) for m in metrics if "epoch" in m and key in m]


def _at(curve: list, epoch: int):
    values = [v for e, v in curve if e == epoch]
    return values[-1] if values else None


def _run_row(manifest: Manifest, run: dict, settings, early: int) -> dict:
    run_dir = manifest.run_dir(run)
    metrics = RunDir(run_dir, create=False).read_metrics() if os.path.isdir(run_dir) else []
    test_loss, test_acc = _curve(metrics, "test_loss"), _curve(metrics, "test_acc")
    done = test_loss[-1][0] if test_loss else 0
    row = {"cell": run["cell"], "seed": run["seed"], "run_dir": run["run_dir"], "epochs_done": done,
           "complete": done >= settings.epochs}
    if test_loss:
        row.update(final_test_loss=test_loss[-1][1], final_test_acc=test_acc[-1][1],
                   final_train_loss=_curve(metrics, "train_loss")[-1][1],
                   final_train_acc=_curve(metrics, "train_acc")[-1][1],
                   early_test_loss=_at(test_loss, early), early_test_acc=_at(test_acc, early),
                   best_test_loss=min(v for _, v in test_loss))
        early_losses = [v for e, v in test_loss if e <= early]
        row["early_auc"] = sum(early_losses) / len(early_losses) if len(early_losses) == early else None
    row["probes"] = {}
    for epoch in sorted(set(settings.probe_epochs()) | set(settings.probe_epochs("landscape_epochs"))):
        result = _read_json(probe_path(run_dir, epoch))
        if result is None:
            continue
        row["probes"][epoch] = {**_probe_row(result), "landscape": "landscape" in result}
        suffix = "" if epoch == settings.epochs else f"_e{epoch}"
        row.update({f"{k}{suffix}": v for k, v in row["probes"][epoch].items()
                    if k in PROBE_KEYS})
    row["curves"] = {"test_loss": test_loss, "test_acc": test_acc,
                     "train_loss": _curve(metrics, "train_loss")}
    return row


def _epochs_to(curve: list, target: float):
    for epoch, value in curve:
        if value <= target:
            return epoch
    return None


def _mean(values):
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def _cell_rows(manifest: Manifest, runs: list) -> list:
    cells = []
    for cell in manifest.cells:
        mine = [r for r in runs if r["cell"] == cell.name]
        row = {"name": cell.name, "genotype": cell.genotype, "role": cell.role, "width": cell.width,
               "depth": cell.depth, "reduce_width": cell.reduce_width, "reduce_depth": cell.reduce_depth,
               "params": cell.params, "n_seeds": sum(r["complete"] for r in mine),
               "seeds": [r["seed"] for r in mine]}
        keys = sorted({k for r in mine for k, v in r.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and k not in ("seed", "epochs_done")})
        for key in keys:
            row[key] = _mean(r.get(key) for r in mine if r["complete"])
        converged = [r.get("hessian_converged") for r in mine if r.get("hessian_converged") is not None]
        row["hessian_converged"] = all(converged) if converged else None
        row["unconverged"] = sorted({k for r in mine for k in r.get("unconverged", ())})
        cells.append(row)
    return cells


def collect(study_dir: str) -> dict:
    """The study's numbers (see the module docstring)."""
    manifest = Manifest(study_dir).load()
    settings = manifest.settings
    early = settings.analysis.early(settings.epochs)
    runs = [_run_row(manifest, run, settings, early) for run in manifest.runs]
    complete = [r for r in runs if r["complete"]]
    target = settings.analysis.target_loss
    if target is None and complete:
        target = max(r["best_test_loss"] for r in complete)
    for r in runs:
        r["epochs_to_target"] = _epochs_to(r["curves"]["test_loss"], target) if target is not None else None
    return {"study": manifest.dir, "settings": settings.to_dict(), "epochs": settings.epochs,
            "early_epoch": early, "target_loss": target,
            "target_loss_rule": "given" if settings.analysis.target_loss is not None
            else "the highest of the runs' best test losses: every run reaches it",
            "runs": runs, "cells": _cell_rows(manifest, runs), "manifest": manifest}
