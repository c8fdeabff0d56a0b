"""Cell width and depth (BRIEF section 3)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfnas.genotypes import Cell, Genotype
from tfnas.resolve import get_genotype
from tfnas.topology import (
    cell_depth, cell_width, node_breakdown, node_depths, node_widths, summarize,
)


@pytest.mark.parametrize("name, width, depth", [
    ("NASNet", 5.0, 2),
    ("AmoebaNet", 4.0, 4),
    ("ENAS", 5.0, 2),
    ("DARTS_V2", 3.5, 3),
    ("SNAS_MILD", 4.0, 2),
])
def test_published_normal_cells(name, width, depth):
    cell = get_genotype(name).cell("normal")
    assert cell_width(cell) == width and isinstance(cell_width(cell), float)
    assert cell_depth(cell) == depth


def test_nasnet_reduce_cell_by_hand():
    # Nodes 2-4 read only inputs (1 each), 5 reads nodes 3 and 2 (0), 6 reads 2 and
    # input 1 (0.5): width 3.5; longest path input -> 3 -> 5 -> output: depth 3.
    cell = get_genotype("NASNet").cell("reduce")
    assert node_widths(cell) == {2: 1.0, 3: 1.0, 4: 1.0, 5: 0.0, 6: 0.5}
    assert (cell_width(cell), cell_depth(cell)) == (3.5, 3)


def _cell(inputs, concat, op="sep_conv_3x3"):
    return Cell(tuple((op, i) for i in inputs), tuple(concat))


def test_widest_four_node_cell():
    cell = _cell([0, 1] * 4, [2, 3, 4, 5])
    assert (cell_width(cell), cell_depth(cell)) == (4.0, 2)


def test_chain():
    chain = _cell([0, 1, 2, 2, 3, 3, 4, 4], [2, 3, 4, 5])
    assert (cell_width(chain), cell_depth(chain)) == (1.0, 5)
    assert node_depths(chain) == {0: 0, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4}


def test_only_concatenated_nodes_feed_the_output():
    # The same chain, but only node 2 reaches the output: depth 2, width unchanged
    # (width counts every intermediate node).
    chain = _cell([0, 1, 2, 2, 3, 3, 4, 4], [2])
    assert (cell_width(chain), cell_depth(chain)) == (1.0, 2)
    # AmoebaNet: nodes 2 and 3 are not concatenated but lie on the depth-4 path.
    amoeba = get_genotype("AmoebaNet").cell("normal")
    assert node_depths(amoeba)[4] == 3 and 2 not in amoeba.concat


def test_half_width_nodes_and_single_node():
    cell = _cell([0, 1, 0, 2], [3])
    assert node_widths(cell) == {2: 1.0, 3: 0.5}
    assert (cell_width(cell), cell_depth(cell)) == (1.5, 3)
    single = _cell([1, 1], [2])
    assert (cell_width(single), cell_depth(single)) == (1.0, 2)


def test_node_breakdown():
    rows = node_breakdown(get_genotype("DARTS_V2").cell("normal"))
    assert [r["node"] for r in rows] == [2, 3, 4, 5]
    assert rows[3] == {"node": 5, "edges": [["skip_connect", 0], ["dil_conv_3x3", 2]],
                       "width": 0.5, "depth": 2, "in_concat": True, "consumers": []}
    assert rows[0]["consumers"] == [5]
    assert sum(r["width"] for r in rows) == 3.5


def test_summarize():
    assert summarize(get_genotype("DARTS_V2")) == {
        "name": "DARTS_V2", "normal_width": 3.5, "normal_depth": 3,
        "reduce_width": 2.5, "reduce_depth": 3}


@st.composite
def random_cells(draw):
    nodes = draw(st.integers(1, 6))
    inputs = [draw(st.integers(0, 1 + e // 2)) for e in range(2 * nodes)]
    concat = draw(st.sets(st.integers(2, 1 + nodes), min_size=1))
    return _cell(inputs, sorted(concat))


@settings(max_examples=150, deadline=None)
@given(random_cells())
def test_width_and_depth_bounds(cell):
    n = cell.num_nodes
    width, depth = cell_width(cell), cell_depth(cell)
    assert 1.0 <= width <= n and (2 * width).is_integer()
    assert 2 <= depth <= n + 1
    # The widest cell is as shallow as possible.
    if width == n:
        assert depth == 2
    assert Genotype(cell.edges, cell.concat, cell.edges, cell.concat).cell("normal") == cell
