"""Cell diagrams with Matplotlib (no graphviz): a cell as a left-to-right DAG.

Input nodes ``c_{k-2}`` and ``c_{k-1}`` on the left, intermediate nodes in
columns by their depth, the output ``c_{k}`` on the right; every edge is
labelled with its operation (and coloured by it); the concat edges into the
output are dashed.  The title gives width and depth (:mod:`tfnas.topology`).

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas,
never through pyplot, so drawing does not touch global backend state.  The
file format follows the suffix of ``path`` (``.png``, ``.svg``, ``.pdf``).
"""

from __future__ import annotations

import io
import math
import os

import matplotlib
import numpy as np

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from matplotlib.transforms import Bbox

from tfnas import topology
from tfnas.genotypes import DARTS_OPS, NASNET_EXTRA_OPS, Cell, Genotype

__all__ = ["FIGURE1_GENOTYPES", "SUPPORTED_SUFFIXES", "DiagramError", "draw_cell", "draw_cells",
           "draw_genotype", "figure1", "cell_figure_png_bytes", "cell_title"]

SUPPORTED_SUFFIXES = (".png", ".svg", ".pdf")
# The five published normal cells of the paper's Figure 1.
FIGURE1_GENOTYPES = ("NASNet", "AmoebaNet", "ENAS", "DARTS_V2", "SNAS_MILD")

_COLUMN_GAP = 2.6   # data units (about inches) between node columns
_ROW_GAP = 1.25     # between nodes of one column
_NODE_RADIUS = 0.24
_FONT = 7.5
_PNG_DPI = 120  # 7.5 pt labels are 12 px tall
_TITLE_HEIGHT = 0.6  # inches above each cell for its two-line title
# One colour per operation (colour-blind-safe Tableau-like palette).
_OP_COLOURS = dict(zip(
    DARTS_OPS + NASNET_EXTRA_OPS,
    ("#7f7f7f", "#1f77b4", "#17becf", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e",
     "#8c564b", "#e377c2", "#bcbd22")))


class DiagramError(ValueError):
    """A diagram that cannot be written (e.g. an unsupported file suffix)."""


def cell_title(cell: Cell, title: str | None = None) -> str:
    """``"<title>\\nwidth 3.5c, depth 3"``."""
    stats = f"width {topology.cell_width(cell):g}c, depth {topology.cell_depth(cell)}"
    return f"{title}\n{stats}" if title else stats


# -- layout -----------------------------------------------------------------

def _layout(cell: Cell) -> dict:
    """Positions ``{node: (x, y)}``; node ``"out"`` is the output.  Columns
    by depth from the inputs, nodes in index order top to bottom."""
    depths = topology.node_depths(cell)
    nodes = list(range(2, 2 + cell.num_nodes))
    out_col = 1 + max(depths[n] for n in nodes)
    columns = {}
    for n in nodes:
        columns.setdefault(depths[n], []).append(n)
    tallest = max(len(c) for c in columns.values())
    spread = max(tallest - 1, 1) * _ROW_GAP
    # Inputs a little inside the tallest column: flatter edges, fewer crossings.
    input_y = max(0.35 * spread, 0.75)
    pos = {0: (0.0, input_y), 1: (0.0, -input_y)}
    for col, members in columns.items():
        top = (len(members) - 1) * _ROW_GAP / 2
        for r, n in enumerate(sorted(members)):
            pos[n] = (col * _COLUMN_GAP, top - r * _ROW_GAP)
    pos["out"] = (out_col * _COLUMN_GAP, 0.0)
    return pos


_CLEARANCE_T = np.linspace(0.05, 0.95, 19)


def _clearance(p0, p1, rad: float, others) -> float:
    """Smallest distance from the arc p0->p1 to any of ``others``."""
    if not others:
        return math.inf
    xs, ys = _arc_point(p0, p1, rad, _CLEARANCE_T)
    ox, oy = np.asarray(others, dtype=float).T
    return float(np.sqrt((xs[:, None] - ox) ** 2 + (ys[:, None] - oy) ** 2).min())


def _edge_curvature(cell: Cell, pos: dict) -> list:
    """An arc3 ``rad`` per edge: twin edges (a node reading one input twice)
    bow apart; an edge that would pass through another node bows around it."""
    rads = []
    for e, (_, src) in enumerate(cell.edges):
        dst = 2 + e // 2
        twin = cell.edges[e ^ 1][1] == src
        if twin:
            # Bow about 0.3 units at the middle, whatever the edge's length.
            length = math.dist(pos[src], pos[dst])
            base = min(max(0.6 / length, 0.08), 0.3)
            sign = 1 if e % 2 == 0 else -1
            choices = tuple(sign * base * f for f in (1.0, 1.5, 2.0))
        else:
            choices = _BOWS
        rads.append(_clear_rad(pos, src, dst, choices))
    return rads


_BOWS = (0.0, 0.15, -0.15, 0.25, -0.25, 0.35, -0.35, 0.5, -0.5)


def _clear_rad(pos: dict, src, dst, choices=_BOWS) -> float:
    """The first curvature in ``choices`` whose arc keeps clear of every
    other node (else the clearest one)."""
    others = [p for n, p in pos.items() if n not in (src, dst)]
    scored = [(_clearance(pos[src], pos[dst], r, others), r) for r in choices]
    clear = [r for c, r in scored if c >= 0.5]
    return clear[0] if clear else max(scored)[1]


def _arc_point(p0, p1, rad: float, t: float):
    """Point at parameter t on Matplotlib's arc3 quadratic Bezier (the axes
    have equal aspect, so data and display geometry agree)."""
    (x0, y0), (x1, y1) = p0, p1
    cx = (x0 + x1) / 2 + rad * (y1 - y0)
    cy = (y0 + y1) / 2 - rad * (x1 - x0)
    u = 1 - t
    return (u * u * x0 + 2 * u * t * cx + t * t * x1,
            u * u * y0 + 2 * u * t * cy + t * t * y1)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


# -- drawing ----------------------------------------------------------------

def _draw_node(ax, xy, text, face, box: bool):
    x, y = xy
    if box:
        w, h = 0.95, 0.5
        ax.add_artist(FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                                    boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=face, edgecolor="black", linewidth=1.0, zorder=3))
    else:
        ax.add_artist(Circle((x, y), _NODE_RADIUS, facecolor=face, edgecolor="black",
                            linewidth=1.0, zorder=3))
    ax.text(x, y, text, ha="center", va="center", fontsize=_FONT + 1.5, zorder=4)


def _shrink(node) -> float:
    # Points to stop an arrow short of a node's outline (box or circle).
    return 20.0 if node in (0, 1, "out") else 13.0


def _geometry(cell: Cell):
    """Node positions, arc curvature of every edge and of every concat edge
    (``{node: rad}``), and the data limits ``((x0, x1), (y0, y1))``."""
    pos = _layout(cell)
    rads = _edge_curvature(cell, pos)
    concat_rads = {}
    for i, n in enumerate(sorted(cell.concat, key=lambda n: pos[n][0])):
        # Alternate the side so long concat edges (e.g. of a chain) do not coincide.
        sign = 1 if i % 2 == 0 else -1
        concat_rads[n] = _clear_rad(pos, n, "out", (0.0,) + tuple(
            sign * f * r for r in (0.12, 0.2, 0.3, 0.4) for f in (1, -1)))
    points = list(pos.values())
    arcs = [(pos[src], pos[2 + e // 2], rads[e]) for e, (_, src) in enumerate(cell.edges)]
    arcs += [(pos[n], pos["out"], r) for n, r in concat_rads.items()]
    for p0, p1, r in arcs:
        points += [_arc_point(p0, p1, r, k / 10) for k in range(1, 10)]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    limits = (min(xs) - 0.75, max(xs) + 0.75), (min(ys) - 0.6, max(ys) + 0.6)
    return pos, rads, concat_rads, limits


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def draw_cell(cell: Cell, path=None, ax=None, title: str | None = None):
    """Draw ``cell``; save to ``path`` (suffix picks PNG/SVG/PDF) if given.

    With ``ax`` the cell is drawn into that axes (e.g. a grid panel; ``path``
    then saves the axes' whole figure); otherwise a new figure is made, one data unit per inch so labels keep
    their size.  A Genotype draws its normal cell.  Returns the figure."""
    if isinstance(cell, Genotype):
        cell = cell.cell("normal")
    pos, rads, concat_rads, (x_lim, y_lim) = _geometry(cell)
    own_figure = ax is None
    if own_figure:
        width, height = x_lim[1] - x_lim[0], y_lim[1] - y_lim[0]
        fig = _new_figure(width, height + _TITLE_HEIGHT)
        ax = fig.add_axes((0, 0, 1, height / (height + _TITLE_HEIGHT)))
    fig = ax.figure
    ax.set_xlim(*x_lim)
    ax.set_ylim(*y_lim)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(cell_title(cell, title), fontsize=_FONT + 2.5, pad=4)

    _draw_node(ax, pos[0], "$c_{k-2}$", "#c7e9c0", box=True)
    _draw_node(ax, pos[1], "$c_{k-1}$", "#c7e9c0", box=True)
    _draw_node(ax, pos["out"], "$c_{k}$", "#fdd49e", box=True)
    for n in range(2, 2 + cell.num_nodes):
        _draw_node(ax, pos[n], str(n), "#c6dbef" if n in cell.concat else "#eeeeee", box=False)

    for n in cell.concat:
        ax.add_artist(FancyArrowPatch(pos[n], pos["out"], arrowstyle="-|>", mutation_scale=10,
                                     connectionstyle=f"arc3,rad={concat_rads[n]}",
                                     linestyle="--", color="#555555", linewidth=0.9,
                                     shrinkA=_shrink(n), shrinkB=_shrink("out"), zorder=1))

    for e, (op, src) in enumerate(cell.edges):
        dst = 2 + e // 2
        ax.add_artist(FancyArrowPatch(
            pos[src], pos[dst], connectionstyle=f"arc3,rad={rads[e]}", arrowstyle="-|>",
            mutation_scale=11, color=_OP_COLOURS.get(op, "black"), linewidth=1.3,
            shrinkA=_shrink(src), shrinkB=_shrink(dst), zorder=2))
    _place_labels(ax, cell, pos, rads)

    if path is not None:
        save_figure(fig, path)
    return fig


def _place_labels(ax, cell: Cell, pos: dict, rads: list) -> None:
    """Put each operation label on its edge where it overlaps the fewest
    already placed labels and nodes (measured with the renderer)."""
    try:
        renderer = ax.figure.canvas.get_renderer()
    except AttributeError:  # a non-Agg canvas
        renderer = ax.figure._get_renderer()
    to_pixels = ax.transData.transform
    blocked = []
    for node, (x, y) in pos.items():
        half = 0.5 if node in (0, 1, "out") else _NODE_RADIUS
        (x0, y0), (x1, y1) = to_pixels((x - half, y - half)), to_pixels((x + half, y + half))
        blocked.append(Bbox.from_extents(x0, y0, x1, y1))
    scale = ax.figure.dpi / 72  # pixels per point
    candidates = (0.6, 0.7, 0.5, 0.78, 0.42, 0.65, 0.55, 0.35, 0.72, 0.46, 0.28, 0.84, 0.22)
    for e, (op, src) in enumerate(cell.edges):
        dst = 2 + e // 2
        best = None
        for t in candidates:
            x, y = _arc_point(pos[src], pos[dst], rads[e], t)
            label = ax.text(x, y, op, fontsize=_FONT, ha="center", va="center",
                            color=_OP_COLOURS.get(op, "black"), zorder=5,
                            bbox=dict(boxstyle="round,pad=0.12", facecolor="white",
                                      edgecolor="none", alpha=0.9))
            box = label.get_window_extent(renderer).padded(3 * scale)
            cost = sum(_overlap(box, other) for other in blocked)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, label, box)
            else:
                label.remove()
            if cost == 0:
                break
        blocked.append(best[2])


def save_figure(fig, path, png_dpi: int = _PNG_DPI, rc: dict | None = None,
                error=DiagramError) -> str:
    """Save ``fig`` as PNG, SVG or PDF by the suffix of ``path`` (shared by
    :mod:`tfnas.plots`, which passes its style and error type)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise error(f"cannot write {path}: use a {', '.join(SUPPORTED_SUFFIXES)} file")
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    # SVG text stays text (editable, and much faster to write than glyph paths).
    with matplotlib.rc_context({**(rc or {}), "svg.fonttype": "none"}):
        fig.savefig(path, dpi=png_dpi if suffix == ".png" else None, facecolor="white")
    return path


def draw_cells(cells_with_titles, path=None, ncols: int = 3):
    """Draw ``[(cell, title), ...]`` in rows of ``ncols``; save to ``path``
    if given.  Every panel has the same scale (one data unit per inch), so
    the cells are comparable.  Returns the figure."""
    items = list(cells_with_titles)
    if not items:
        raise DiagramError("no cells to draw")
    ncols = max(1, min(int(ncols), len(items)))
    sizes = []
    for cell, _ in items:
        (x0, x1), (y0, y1) = _geometry(cell)[3]
        sizes.append((x1 - x0, y1 - y0))
    gap = 0.3
    rows = [list(range(i, min(i + ncols, len(items)))) for i in range(0, len(items), ncols)]
    row_heights = [max(sizes[i][1] for i in row) + _TITLE_HEIGHT + gap for row in rows]
    fig_w = max(sum(sizes[i][0] + gap for i in row) for row in rows)
    fig_h = sum(row_heights)
    fig = _new_figure(fig_w, fig_h)
    top = fig_h
    for row, row_h in zip(rows, row_heights):
        used = sum(sizes[i][0] + gap for i in row)
        left = (fig_w - used) / 2 + gap / 2
        for i in row:
            w, h = sizes[i]
            bottom = top - row_h + (row_h - _TITLE_HEIGHT - h) / 2
            ax = fig.add_axes((left / fig_w, bottom / fig_h, w / fig_w, h / fig_h))
            draw_cell(items[i][0], ax=ax, title=items[i][1])
            left += w + gap
        top -= row_h
    if path is not None:
        save_figure(fig, path)
    return fig


def draw_genotype(genotype: Genotype, path=None, title: str | None = None):
    """Normal and reduction cell of ``genotype`` side by side."""
    name = title or genotype.name or "genotype"
    return draw_cells([(genotype.cell("normal"), f"{name}: normal cell"),
                       (genotype.cell("reduce"), f"{name}: reduction cell")], path, ncols=2)


def figure1(path=None, names=FIGURE1_GENOTYPES, ncols: int = 3):
    """The paper's Figure 1: the published normal cells labelled with width
    and depth."""
    from tfnas.resolve import get_genotype
    return draw_cells([(get_genotype(n).cell("normal"), n) for n in names], path, ncols=ncols)


def cell_figure_png_bytes(cell: Cell, title: str | None = None, dpi: int = 100) -> bytes:
    """The diagram of ``cell`` as PNG bytes (e.g. for a TensorBoard image)."""
    fig = draw_cell(cell, title=title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()
