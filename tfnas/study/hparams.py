"""Every run of a study in TensorBoard's HParams dashboard.

``tensorboard --logdir STUDY`` then lists one session per run (cell and
seed) with the hyper-parameters ``cell``, ``width``, ``depth``,
``reduce_width``, ``reduce_depth``, ``params`` and ``seed``, and the
metrics ``study/final_test_acc``, ``study/early_test_acc``,
``study/final_test_loss``, ``study/top_eigenvalue`` and
``study/gradient_variance`` (final epoch), written under
``runs/<run>/tb/hparams``; the experiment's configuration (domains and
metric names) is written to ``tb-hparams/``.  Rewritten whole each time.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["METRICS", "write_hparams"]

METRICS = (("final_test_acc", "final test accuracy"), ("early_test_acc", "early test accuracy"),
           ("final_test_loss", "final test loss"), ("top_eigenvalue", "top Hessian eigenvalue"),
           ("gradient_variance", "gradient variance E||g-g_bar||"))


def write_hparams(table: dict) -> str:
    """Write the HParams summaries of ``table`` (:func:`tfnas.study.results.collect`);
    returns the experiment directory."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    cells = {c["name"]: c for c in table["cells"]}
    names = sorted(cells)
    hparams = [hp.HParam("cell", hp.Discrete(names)), hp.HParam("width", hp.RealInterval(0.0, 10.0)),
               hp.HParam("depth", hp.IntInterval(1, 20)), hp.HParam("reduce_width", hp.RealInterval(0.0, 10.0)),
               hp.HParam("reduce_depth", hp.IntInterval(1, 20)),
               hp.HParam("params", hp.IntInterval(0, 10 ** 9)), hp.HParam("seed", hp.IntInterval(0, 2 ** 31))]
    metrics = [hp.Metric(f"study/{key}", display_name=label) for key, label in METRICS]
    experiment = os.path.join(table["study"], "tb-hparams")
    shutil.rmtree(experiment, ignore_errors=True)
    with tf.summary.create_file_writer(experiment).as_default():
        hp.hparams_config(hparams=hparams, metrics=metrics)
    by_name = {h.name: h for h in hparams}
    for run in table["runs"]:
        if not run.get("complete"):
            continue
        cell = cells[run["cell"]]
        values = {"cell": cell["name"], "width": float(cell["width"]), "depth": int(cell["depth"]),
                  "reduce_width": float(cell["reduce_width"]), "reduce_depth": int(cell["reduce_depth"]),
                  "params": int(cell["params"]), "seed": int(run["seed"])}
        logdir = os.path.join(table["study"], run["run_dir"], "tb", "hparams")
        shutil.rmtree(logdir, ignore_errors=True)
        with tf.summary.create_file_writer(logdir).as_default():
            hp.hparams({by_name[k]: v for k, v in values.items()}, trial_id=os.path.basename(run["run_dir"]))
            for key, _ in METRICS:
                if run.get(key) is not None:
                    tf.summary.scalar(f"study/{key}", float(run[key]), step=int(run["epochs_done"]))
    return experiment
