"""The study's figures, PNG and SVG (house style of :mod:`tfnas.plots`).

- ``cells``: the normal cells, titled with width and depth;
- ``test_loss_curves`` / ``test_acc_curves``: per epoch, grouped by width band;
- ``landscape_contours``: the loss contour of every cell (small multiples;
  one file per cell under ``cells/`` too);
- ``gradvar_surfaces``: the gradient variance over the same grid, 3-D;
- ``scatter``: width and depth against convergence speed, final accuracy,
  top eigenvalue and gradient variance, each panel with Spearman's rho and
  its bootstrap interval;
- ``early_vs_final``: accuracy after the early epoch against final
  accuracy, with Kendall's tau (what a NAS algorithm sees vs what it wants).
"""

from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
from matplotlib.ticker import MaxNLocator

from tfnas import diagrams, plots
from tfnas.genotypes import Genotype
from tfnas.study.probing import probe_path

__all__ = ["SCATTER_Y", "draw_figures"]

# (key, label, paper's expected sign against width) of the scatter rows.
SCATTER_Y = (("epochs_to_target", "epochs to the target test loss", -1),
             ("early_auc", "area under the early test-loss curve", -1),
             ("final_test_acc", "final test accuracy", None),
             ("top_eigenvalue", "top Hessian eigenvalue λ_max", -1),
             ("gradient_variance", "gradient variance E‖g−ḡ‖", -1))


def _save(fig, out_dir: str, name: str) -> dict:
    paths = {}
    for suffix in ("png", "svg"):
        paths[suffix] = plots.save_figure(fig, os.path.join(out_dir, f"{name}.{suffix}"))
    return paths


def _cells_figure(table, out_dir):
    # draw_cell titles each panel with the cell's width and depth under its name
    items = [(Genotype.from_dict(c["genotype"]).cell("normal"), c["name"]) for c in table["cells"]]
    return _save(diagrams.draw_cells(items, ncols=4), out_dir, "cells")


def _landscapes(table) -> list:
    """(cell name, landscape dict) of the cells with a final-epoch landscape."""
    import json
    out = []
    for run in table["runs"]:
        path = probe_path(os.path.join(table["study"], run["run_dir"]), table["epochs"])
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as fh:
            result = json.load(fh)
        if "landscape" in result:
            out.append((f"{run['cell']} (seed {run['seed']})" if len(table["settings"]["seeds"]) > 1
                        else run["cell"], result["landscape"]))
    return out


def _array(values):
    return np.array([[np.nan if v is None else v for v in row] for row in values], float)


@plots._styled
def _contours(landscapes, out_dir):
    cols = min(4, len(landscapes))
    rows = math.ceil(len(landscapes) / cols)
    fig = plots._figure(3.2 * cols, 2.9 * rows)
    for i, (name, land) in enumerate(landscapes):
        ax = fig.add_subplot(rows, cols, i + 1)
        plots.plot_contour(land["x"], land["y"], _array(land["loss"]), ax=ax, title=name, levels=12,
                           xlabel="", ylabel="")
    fig.suptitle("Test loss around the trained weights (filter-normalised directions)")
    return _save(fig, out_dir, "landscape_contours")


@plots._styled
def _surfaces(landscapes, out_dir):
    landscapes = [(n, l) for n, l in landscapes if "gradient_variance" in l]
    if not landscapes:
        return None
    cols = min(4, len(landscapes))
    rows = math.ceil(len(landscapes) / cols)
    fig = plots._figure(3.2 * cols, 3.0 * rows)
    for i, (name, land) in enumerate(landscapes):
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        xx, yy = np.meshgrid(land["x"], land["y"], indexing="ij")
        # log scale: the variance grows by orders of magnitude towards the
        # corners, which would flatten the basin on a linear axis
        z = np.log10(np.maximum(_array(land["gradient_variance"]["mean_norm_deviation"]), 1e-12))
        ax.plot_surface(xx, yy, z, cmap=plots.CMAP, linewidth=0, antialiased=True)
        ax.set_title(name)
        ax.tick_params(labelsize=6, pad=0)
        ax.view_init(elev=30, azim=-60)
    fig.suptitle("Gradient variance over the loss-landscape grid: log10 E‖g−ḡ‖")
    return _save(fig, out_dir, "gradvar_surfaces")


def _per_cell(landscapes, out_dir):
    os.makedirs(os.path.join(out_dir, "cells"), exist_ok=True)
    for name, land in landscapes:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        fig = plots.plot_contour(land["x"], land["y"], _array(land["loss"]), title=f"{name}: test loss")
        _save(fig, os.path.join(out_dir, "cells"), f"{safe}_contour")
        if "gradient_variance" in land:
            fig = plots.plot_surface(land["x"], land["y"],
                                     _array(land["gradient_variance"]["mean_norm_deviation"]),
                                     title=f"{name}: gradient variance", zlabel="log10 E‖g−ḡ‖", log=True)
            _save(fig, os.path.join(out_dir, "cells"), f"{safe}_gradvar_surface")


def _correlation_text(row, statistic="spearman") -> str:
    if row is None or row.get(statistic) is None:
        return "n/a"
    symbol = "ρ" if statistic == "spearman" else "τ"
    low, high = (row["ci_low"], row["ci_high"]) if statistic == "spearman" else \
        (row["kendall_ci_low"], row["kendall_ci_high"])
    interval = f" [{low:+.2f}, {high:+.2f}]" if low is not None else ""
    return f"{symbol} = {row[statistic]:+.2f}{interval}, n = {row['n']}"


def _scatter_panel(ax, cells, x_key, y_key, label, row):
    x = np.array([c.get(x_key) if c.get(x_key) is not None else np.nan for c in cells], float)
    y = np.array([c.get(y_key) if c.get(y_key) is not None else np.nan for c in cells], float)
    # the topology values are few and discrete: spread coinciding points a little
    jitter = (np.arange(len(x)) % 5 - 2) * (0.02 if x_key == "width" else 0.04)
    base = np.array([c["role"] == "base" for c in cells])
    ax.scatter(x[~base] + jitter[~base], y[~base], s=22, color=plots.LOSS_COLOR, alpha=0.8)
    ax.scatter(x[base], y[base], s=70, marker="*", color=plots.ACCURACY_COLOR, label="base cell")
    ax.set_xlabel(f"normal cell {x_key}" + (" (c)" if x_key == "width" else " (edges)"))
    if x_key == "depth":   # counts: whole-number ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y_key == "epochs_to_target":
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label, fontsize=7)
    ax.set_title(_correlation_text(row), fontsize=8)


@plots._styled
def _scatter(table, correlations, out_dir):
    rows = [(k, label) for k, label, _ in SCATTER_Y if any(c.get(k) is not None for c in table["cells"])]
    if not rows:
        return None
    fig = plots._figure(2.6 * len(rows), 4.8)
    by_pair = {(r["x"], r["y"]): r for r in correlations}
    for j, (key, label) in enumerate(rows):
        for i, x_key in enumerate(("width", "depth")):
            ax = fig.add_subplot(2, len(rows), i * len(rows) + j + 1)
            _scatter_panel(ax, table["cells"], x_key, key, label, by_pair.get((x_key, key)))
    fig.suptitle("Cell width and depth against convergence, accuracy and smoothness "
                 "(Spearman ρ, bootstrap CI; ★ the base cell)")
    return _save(fig, out_dir, "scatter")


@plots._styled
def _early_vs_final(table, row, out_dir):
    cells = [c for c in table["cells"] if c.get("early_test_acc") is not None
             and c.get("final_test_acc") is not None]
    if not cells:
        return None
    fig = plots._figure(4.4, 3.8)
    ax = fig.add_subplot()
    x = 100 * np.array([c["early_test_acc"] for c in cells])
    y = 100 * np.array([c["final_test_acc"] for c in cells])
    colors = matplotlib.colormaps["plasma"](np.interp([c["width"] for c in cells], [1, 4], [0.1, 0.85]))
    ax.scatter(x, y, c=colors, s=30)
    for c, xi, yi in zip(cells, x, y):
        ax.annotate(c["name"].replace("DARTS_V2_", ""), (xi, yi), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")
    ax.set_xlabel(f"test accuracy after epoch {table['early_epoch']} (%) — what NAS sees")
    ax.set_ylabel(f"final test accuracy, epoch {table['epochs']} (%)")
    ax.set_title(_correlation_text(row, "kendall") + " (colour: width)", fontsize=8)
    return _save(fig, out_dir, "early_vs_final")


def draw_figures(table: dict, correlations: list, out_dir: str) -> dict:
    """Draw every figure the data allow into ``out_dir``; returns
    ``{name: {"png": path, "svg": path}}``."""
    os.makedirs(out_dir, exist_ok=True)
    figures = {"cells": _cells_figure(table, out_dir)}
    run_dirs = [os.path.join(table["study"], r["run_dir"]) for r in table["runs"] if r["curves"]["test_loss"]]
    if run_dirs:
        for metric in ("test_loss", "test_acc"):
            fig = plots.plot_training_curves(run_dirs, metric=metric,
                                             title=f"{metric.replace('_', ' ')} by normal-cell width")
            figures[f"{metric}_curves"] = _save(fig, out_dir, f"{metric}_curves")
    landscapes = _landscapes(table)
    if landscapes:
        figures["landscape_contours"] = _contours(landscapes, out_dir)
        surfaces = _surfaces(landscapes, out_dir)
        if surfaces:
            figures["gradvar_surfaces"] = surfaces
        _per_cell(landscapes, out_dir)
    scatter = _scatter(table, correlations, out_dir)
    if scatter:
        figures["scatter"] = scatter
    early = next((r for r in correlations if r["x"] == "early_test_acc" and r["y"] == "final_test_acc"), None)
    panel = _early_vs_final(table, early, out_dir)
    if panel:
        figures["early_vs_final"] = panel
    return figures
