"""Figures for the probes: landscape curves, contours and surfaces, Hessian
spectra, and training curves grouped by cell-width band (the paper's figure).

Every function builds a :class:`matplotlib.figure.Figure` on the Agg canvas
(no pyplot, no global backend switch, safe in servers and tests), returns
it, and saves it when given ``path`` (``.png``, ``.pdf`` or ``.svg`` by
suffix).  One style for all: :data:`STYLE`.
"""

from __future__ import annotations

import os

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tfnas import topology
from tfnas.config import TrainConfig
from tfnas.resolve import get_genotype
from tfnas.rundir import RunDir
from tfnas.search.settings import SearchSettings

PNG_DPI = 150
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "figure.dpi": 100,
}
LOSS_COLOR = "#1f4e9c"
ACCURACY_COLOR = "#c0392b"
CMAP = "viridis"


class PlotError(ValueError):
    """Bad input to a plot (unknown file type, empty data...)."""


def _figure(width=5.0, height=3.6) -> Figure:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path) -> str:
    """Save ``fig`` to ``path`` (PNG at 150 dpi, PDF or SVG by suffix)."""
    from tfnas.diagrams import save_figure as save
    return save(fig, path, png_dpi=PNG_DPI, rc={**STYLE, "pdf.fonttype": 42}, error=PlotError)


def _finish(fig, path):
    if path is not None:
        save_figure(fig, path)
    return fig


def _styled(fn):
    """Run a plotting function inside the house style."""
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


# ------------------------------------------------------------ 1-D curves

@_styled
def plot_curve(x, loss, accuracy=None, path=None, title=None, xlabel="step along direction",
               ylabel="loss", label=None) -> Figure:
    """A 1-D landscape: loss (left axis) and, if given, accuracy (right axis)."""
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    if x.shape != loss.shape or x.size == 0:
        raise PlotError("x and loss must be non-empty and of the same length")
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(x, loss, color=LOSS_COLOR, marker="o" if x.size <= 25 else None, markersize=3,
            label=label or ylabel)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel, color=LOSS_COLOR)
    ax.tick_params(axis="y", colors=LOSS_COLOR)
    if accuracy is not None and np.isfinite(np.asarray(accuracy, float)).any():
        right = ax.twinx()
        right.plot(x, 100 * np.asarray(accuracy, float), color=ACCURACY_COLOR, linestyle="--",
                   label="accuracy")
        right.set_ylabel("accuracy (%)", color=ACCURACY_COLOR)
        right.tick_params(axis="y", colors=ACCURACY_COLOR)
        right.spines["right"].set_visible(True)
        right.grid(False)
    if title:
        ax.set_title(title)
    return _finish(fig, path)


# ------------------------------------------------------ 2-D landscapes

def _grid(x, y, z):
    x, y, z = np.asarray(x, float), np.asarray(y, float), np.asarray(z, float)
    if z.shape != (x.size, y.size):
        raise PlotError(f"z has shape {z.shape}, expected ({x.size}, {y.size})")
    if not np.isfinite(z).any():
        raise PlotError("nothing to plot: no finite values")
    # z[i, j] is at (x[i], y[j]); Matplotlib wants rows along y.
    xx, yy = np.meshgrid(x, y, indexing="ij")
    return xx, yy, z


def _levels(z, levels, log):
    finite = z[np.isfinite(z)]
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1e-12
    if log and lo > 0:
        return np.geomspace(lo, hi, levels)
    return np.linspace(lo, hi, levels)


@_styled
def plot_contour(x, y, z, path=None, title=None, zlabel="loss", levels=15, log=None,
                 xlabel="direction 1", ylabel="direction 2", ax=None) -> Figure:
    """Labelled contour lines of ``z[i, j]`` at ``(x[i], y[j])`` over a
    filled map.  ``log`` (default: when the values are positive and span more
    than a factor 2) spaces the levels geometrically, which resolves the basin."""
    xx, yy, z = _grid(x, y, z)
    finite = z[np.isfinite(z)]
    if log is None:
        log = bool(finite.min() > 0 and finite.max() / finite.min() > 2)
    fig = ax.figure if ax is not None else _figure(4.8, 4.0)
    ax = ax or fig.add_subplot()
    values = _levels(z, int(levels), log)
    norm = matplotlib.colors.LogNorm(values[0], values[-1]) if log and values[0] > 0 else None
    filled = ax.contourf(xx, yy, z, levels=values, cmap=CMAP, norm=norm, extend="both")
    lines = ax.contour(xx, yy, z, levels=values, colors="white", linewidths=0.6, alpha=0.8)
    ax.clabel(lines, lines.levels[::2], inline=True, fontsize=6, fmt=lambda v: f"{v:.3g}")
    ax.plot([0], [0], marker="*", color="#e74c3c", markersize=9, markeredgecolor="white",
            markeredgewidth=0.6, linestyle="none")
    bar = fig.colorbar(filled, ax=ax, shrink=0.9)
    # plain numbers on the bar, not "2.9x10^0" (the log norm's default)
    bar.ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    bar.ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    bar.set_label(zlabel)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("equal" if np.ptp(x) and np.isclose(np.ptp(x), np.ptp(y)) else "auto")
    ax.grid(False)
    if title:
        ax.set_title(title)
    return _finish(fig, path)


@_styled
def plot_surface(x, y, z, path=None, title=None, zlabel="loss", xlabel="direction 1",
                 ylabel="direction 2", log=False) -> Figure:
    """A shaded 3-D surface of ``z[i, j]`` at ``(x[i], y[j])``."""
    xx, yy, z = _grid(x, y, z)
    shown = np.log10(z) if log else z
    fig = _figure(5.2, 4.2)
    ax = fig.add_subplot(projection="3d")
    surface = ax.plot_surface(xx, yy, shown, cmap=CMAP, linewidth=0, antialiased=True,
                              rcount=min(100, xx.shape[0]), ccount=min(100, xx.shape[1]))
    ax.set_xlabel(xlabel, labelpad=2)
    ax.set_ylabel(ylabel, labelpad=2)
    ax.set_zlabel(f"log10 {zlabel}" if log else zlabel, labelpad=4)
    ax.tick_params(pad=0)
    ax.view_init(elev=30, azim=-60)
    fig.colorbar(surface, ax=ax, shrink=0.6, pad=0.08)
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def plot_landscape(landscape, path=None, quantity: str = "loss", kind: str = "contour",
                   title=None) -> Figure:
    """Plot a :class:`tfnas.probes.Landscape`: a curve for 1-D, a contour or
    surface for 2-D.  ``quantity``: ``loss``, ``accuracy`` or a gradient
    variance key (e.g. ``mean_norm_deviation``)."""
    if quantity == "loss":
        values = landscape.loss
    elif quantity == "accuracy":
        values = 100 * landscape.accuracy
    elif quantity in landscape.gradient_variance:
        values = landscape.gradient_variance[quantity]
    else:
        raise PlotError(f"landscape has no {quantity!r}")
    label = {"accuracy": "accuracy (%)", "mean_norm_deviation": "gradient variance E‖g−ḡ‖",
             "mean_sq_deviation": "E‖g−ḡ‖²", "mean_gradient_norm": "‖ḡ‖"}.get(quantity, quantity)
    if landscape.dims == 1:
        return plot_curve(landscape.x, values, landscape.accuracy if quantity == "loss" else None,
                          path=path, title=title, ylabel=label)
    if kind == "surface":
        return plot_surface(landscape.x, landscape.y, values, path=path, title=title, zlabel=label)
    if kind != "contour":
        raise PlotError(f"kind must be 'contour' or 'surface', not {kind!r}")
    return plot_contour(landscape.x, landscape.y, values, path=path, title=title, zlabel=label,
                        log=None if quantity != "accuracy" else False)


# ------------------------------------------------------------- spectra

@_styled
def plot_spectrum(density=None, eigenvalues=None, path=None, title=None) -> Figure:
    """Hessian spectrum: the SLQ density (log scale; a
    :class:`tfnas.probes.SpectralDensity` or ``(grid, density)``) and/or the
    top eigenvalues as stems."""
    if density is None and eigenvalues is None:
        raise PlotError("give a density, eigenvalues, or both")
    fig = _figure(5.4, 3.4)
    ax = fig.add_subplot()
    if density is not None:
        grid, values = (density.grid, density.density) if hasattr(density, "grid") else density
        values = np.maximum(np.asarray(values, float), 1e-12)
        ax.semilogy(grid, values, color=LOSS_COLOR, label="spectral density (SLQ)")
        ax.fill_between(grid, 1e-12, values, color=LOSS_COLOR, alpha=0.15)
        ax.set_ylim(max(values.max() * 1e-8, 1e-12), values.max() * 3)
        ax.set_ylabel("density")
    if eigenvalues is not None:
        eigenvalues = np.atleast_1d(np.asarray(eigenvalues, float))
        target = ax if density is None else ax.twinx()
        markerline, stemlines, _ = target.stem(eigenvalues, np.abs(eigenvalues) / max(np.abs(eigenvalues).max(), 1e-300),
                                               linefmt="-", markerfmt="o", basefmt=" ",
                                               label=f"top {eigenvalues.size} eigenvalue(s)")
        markerline.set_color(ACCURACY_COLOR)
        stemlines.set_color(ACCURACY_COLOR)
        target.set_ylim(0, 1.15)
        if density is None:
            target.set_ylabel("|λ| / |λ_max|")
        else:
            target.set_yticks([])
            target.grid(False)
        for value in eigenvalues[:3]:
            target.annotate(f"{value:.4g}", (value, 1.0 * abs(value) / max(np.abs(eigenvalues).max(), 1e-300)),
                            textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7,
                            color=ACCURACY_COLOR)
    ax.set_xlabel("eigenvalue")
    handles = []
    for a in fig.axes:
        handles += a.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, loc="upper center", frameon=False)
    if title:
        ax.set_title(title)
    return _finish(fig, path)


# ------------------------------------------------------ training curves

def width_band(width: float, band: float = 0.5) -> float:
    """A cell width (units of c) rounded to its band (default 0.5c bands:
    the paper's 2c, 2.5c, 3c, 3.5c)."""
    return round(float(width) / band) * band


def read_run(run_dir) -> dict:
    """``{name, genotype, width, depth, metrics}`` of a training run directory."""

    run = RunDir(run_dir, create=False)
    genotype = TrainConfig.from_dict(run.read_config()).resolved_genotype()
    metrics = run.read_metrics()
    cell = genotype.cell("normal")
    return {"name": genotype.name or os.path.basename(os.path.normpath(run_dir)),
            "run_dir": os.fspath(run_dir), "genotype": genotype,
            "width": topology.cell_width(cell), "depth": topology.cell_depth(cell), "metrics": metrics}


@_styled
def plot_training_curves(run_dirs, path=None, metric: str = "test_loss", band: float = 0.5,
                         title=None, log=False) -> Figure:
    """``metric`` over epochs for several run directories, coloured by the
    normal cell's width band; thin lines are runs, thick lines band means
    (over the epochs all runs of the band reached)."""
    runs = [read_run(d) for d in run_dirs]
    runs = [r for r in runs if any(metric in m for m in r["metrics"])]
    if not runs:
        raise PlotError(f"no run has {metric!r} in its metrics.jsonl")
    bands = sorted({width_band(r["width"], band) for r in runs})
    cmap = matplotlib.colormaps["plasma"]
    colors = {b: cmap(0.1 + 0.75 * (i / max(len(bands) - 1, 1))) for i, b in enumerate(bands)}
    fig = _figure(5.6, 3.8)
    ax = fig.add_subplot()
    for b in bands:
        members = [r for r in runs if width_band(r["width"], band) == b]
        curves = []
        for r in members:
            points = [(m["epoch"], m[metric]) for m in r["metrics"] if metric in m and "epoch" in m]
            if not points:
                continue
            epochs, values = map(np.asarray, zip(*points))
            curves.append((epochs, values))
            ax.plot(epochs, values, color=colors[b], linewidth=0.8, alpha=0.45)
        length = min(len(e) for e, _ in curves)
        mean = np.mean([v[:length] for _, v in curves], axis=0)
        ax.plot(curves[0][0][:length], mean, color=colors[b], linewidth=2.2,
                label=f"width {b:g}c ({len(curves)} run{'s' if len(curves) > 1 else ''})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    if log:
        ax.set_yscale("log")
    ax.legend(frameon=False, title="normal cell", title_fontsize=8)
    if title:
        ax.set_title(title)
    return _finish(fig, path)


# ------------------------------------------------------------ search topology drift

PUBLISHED_CELLS = ("NASNet", "AmoebaNet", "ENAS", "DARTS_V2", "SNAS_MILD")


def read_search_run(run_dir) -> dict:
    """``{name, method, records}`` of a search run directory (``search.py``)."""
    run = RunDir(run_dir, create=False)
    settings = SearchSettings.from_dict(run.read_config())
    records = [r for r in run.read_metrics() if "normal_width" in r]
    name = os.path.basename(os.path.normpath(run_dir))
    return {"name": name, "method": settings.method, "records": records}


def _published_levels(cell: str, quantity: str) -> dict:
    return {name: (topology.cell_width if quantity == "width" else topology.cell_depth)(
        get_genotype(name).cell(cell)) for name in PUBLISHED_CELLS}


def _mark_published(ax, levels: dict) -> None:
    """Dashed grey lines at the published cells' values, labelled at the right."""
    by_value = {}
    for name, value in levels.items():
        by_value.setdefault(value, []).append(name)
    for value, names in by_value.items():
        ax.axhline(value, color="0.55", linestyle="--", linewidth=0.8, zorder=0)
        ax.annotate(", ".join(names), (1.0, value), xycoords=("axes fraction", "data"),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=7, color="0.35")


@_styled
def plot_topology_drift(run_dirs, path=None, cell: str = "normal", title=None) -> Figure:
    """Width and depth of a search's cells over its epochs, for one or more
    search runs (DARTS, ENAS, random): the derived cell of every epoch
    (solid), and for methods that sample architectures the mean ± one
    standard deviation of the architectures the child trained on (band);
    the published cells' values dashed."""
    runs = [read_search_run(d) for d in run_dirs]
    runs = [r for r in runs if r["records"]]
    if not runs:
        raise PlotError("no search run has epochs with a derived genotype in its metrics.jsonl")
    fig = _figure(8.6, 3.6)
    axes = fig.subplots(1, 2)
    colors = matplotlib.colormaps["tab10"]
    for i, run in enumerate(runs):
        epochs = np.asarray([r["epoch"] for r in run["records"]])
        label = f"{run['method']}: {run['name']}"
        for ax, quantity in zip(axes, ("width", "depth")):
            derived = [r[f"{cell}_{quantity}"] for r in run["records"]]
            ax.plot(epochs, derived, color=colors(i), marker="o", markersize=3,
                    label=f"{label} (derived)")
            key = f"sampled_{cell}_{quantity}"
            if all(f"{key}_mean" in r for r in run["records"]):
                mean = np.asarray([r[f"{key}_mean"] for r in run["records"]])
                std = np.asarray([r[f"{key}_std"] for r in run["records"]])
                ax.fill_between(epochs, mean - std, mean + std, color=colors(i), alpha=0.18, linewidth=0)
                ax.plot(epochs, mean, color=colors(i), linestyle=":", label=f"{label} (sampled, mean ± sd)")
    for ax, quantity in zip(axes, ("width", "depth")):
        _mark_published(ax, _published_levels(cell, quantity))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{cell} cell {quantity}" + (" (units of c)" if quantity == "width" else " (edges)"))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[1].yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(2, len(labels)), frameon=False)
    fig.suptitle(title or f"Topology drift of the search: {cell} cell width and depth per epoch")
    return _finish(fig, path)
