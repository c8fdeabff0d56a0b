"""Derivation of a genotype from alphas (the DARTS rule)."""

import numpy as np
import pytest

from tfnas.resolve import get_genotype, resolve_genotype
from tfnas.search.derive import derive_cell, derive_genotype, genotype_record
from tfnas.space import DARTS_SPACE, ENAS_SPACE


def _alphas_encoding(edges, space, rng):
    """Alphas under which the DARTS rule picks ``edges`` (node by node, in
    order of strength), with 'none' the largest weight everywhere."""
    alphas = rng.normal(scale=0.1, size=(space.num_edges, len(space.operations)))
    if "none" in space.operations:
        alphas[:, space.operations.index("none")] = 5.0
    rows = {pair: r for r, pair in enumerate(space.edge_inputs())}
    for e, (op, j) in enumerate(edges):
        node = 2 + e // 2
        alphas[rows[(node, j)], space.operations.index(op)] = 3.0 - 0.5 * (e % 2)
    return alphas


def test_darts_v2_round_trip():
    rng = np.random.default_rng(0)
    g = get_genotype("DARTS_V2")
    derived = derive_genotype(_alphas_encoding(g.normal, DARTS_SPACE, rng),
                              _alphas_encoding(g.reduce, DARTS_SPACE, rng))
    assert derived == g  # 'none' is ignored although it weighs most
    assert derived.normal == g.normal  # same edge order as the reference prints


def test_ties_and_shape_errors():
    w = np.full((DARTS_SPACE.num_edges, 8), 1 / 8)
    edges, concat = derive_cell(w)
    # all equal: first two inputs, first non-none operation
    assert edges[:2] == (("max_pool_3x3", 0), ("max_pool_3x3", 1))
    assert concat == (2, 3, 4, 5)
    with pytest.raises(ValueError, match="shape"):
        derive_cell(np.zeros((3, 8)))


def test_enas_space_uses_loose_ends():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(ENAS_SPACE.num_edges, 5))
    g = derive_genotype(a, a, ENAS_SPACE)
    cell = g.cell("normal")
    assert cell.num_nodes == 5
    assert cell.concat == cell.loose_ends()
    assert set(cell.operations) <= set(ENAS_SPACE.operations)


def test_record_has_width_depth_and_parses(tmp_path):
    g = get_genotype("DARTS_V2")
    rec = genotype_record(g)
    assert rec["normal_width"] == 3.5 and rec["normal_depth"] == 3
    path = tmp_path / "g.json"
    path.write_text(__import__("json").dumps(rec["genotype"]))
    assert resolve_genotype(str(path)) == g
    assert resolve_genotype(rec["repr"]) == g
