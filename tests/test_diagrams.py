"""Cell diagrams: files by suffix, readable labels, Figure 1."""

import itertools

import pytest

from tfnas.diagrams import (
    DiagramError, cell_figure_png_bytes, draw_cell, draw_cells, draw_genotype, figure1,
)
from tfnas.genotypes import KNOWN_OPS
from tfnas.resolve import get_genotype
from tfnas.variants import deepest_rewiring

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _texts(fig):
    """(text, window extent) of every node and edge label (titles excluded)."""
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer))
            for ax in fig.axes for t in ax.texts if t.get_text()]


def _overlapping_pairs(fig):
    boxes = _texts(fig)
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def test_figure1_labels_and_titles(tmp_path):
    path = tmp_path / "figure1.png"
    fig = figure1(path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["NASNet\nwidth 5c, depth 2", "AmoebaNet\nwidth 4c, depth 4",
                      "ENAS\nwidth 5c, depth 2", "DARTS_V2\nwidth 3.5c, depth 3",
                      "SNAS_MILD\nwidth 4c, depth 2"]
    assert _overlapping_pairs(fig) == []
    # Every edge of every cell carries its operation label.
    for ax, name in zip(fig.axes, ("NASNet", "AmoebaNet", "ENAS", "DARTS_V2", "SNAS_MILD")):
        labels = sorted(t.get_text() for t in ax.texts if t.get_text() in KNOWN_OPS)
        assert labels == sorted(get_genotype(name).cell("normal").operations)


@pytest.mark.parametrize("name", ["NASNet", "AmoebaNet", "ENAS_ADAPT", "DARTS_V1"])
def test_no_overlapping_labels_in_reduce_and_rewired_cells(name):
    genotype = get_genotype(name)
    fig = draw_cells([(genotype.cell("reduce"), "reduce"),
                      (deepest_rewiring(genotype).cell("normal"), "chain")])
    assert _overlapping_pairs(fig) == []


def test_png_and_svg_by_suffix(tmp_path):
    cell = get_genotype("DARTS_V2").cell("normal")
    draw_cell(cell, tmp_path / "cell.png", title="DARTS_V2")
    draw_cell(cell, tmp_path / "sub" / "cell.svg")
    draw_genotype(get_genotype("ENAS"), tmp_path / "enas.svg")
    assert (tmp_path / "cell.png").read_bytes().startswith(PNG_MAGIC)
    for svg in ("sub/cell.svg", "enas.svg"):
        text = (tmp_path / svg).read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text
    with pytest.raises(DiagramError, match="use a .png"):
        draw_cell(cell, tmp_path / "cell.jpg2")
    with pytest.raises(DiagramError, match="no cells"):
        draw_cells([])


def test_png_bytes_for_tensorboard():
    data = cell_figure_png_bytes(get_genotype("SNAS_MILD").cell("normal"), title="SNAS")
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_does_not_use_pyplot_state():
    import matplotlib
    backend = matplotlib.get_backend()
    draw_cell(get_genotype("DARTS_V2"))
    assert matplotlib.get_backend() == backend
