"""Connection / operation variants (BRIEF section 4), stratified sets, rewirings."""

import numpy as np
import pytest

from tfnas.genotypes import DARTS_OPS_NO_NONE, GenotypeError, zoo_names
from tfnas.resolve import get_genotype
from tfnas.topology import cell_depth, cell_width
from tfnas.variants import (
    conn_variant, deepest_rewiring, make_variant, named_variant, ops_variant,
    parse_variant_name, possible_widths, stratified_variants, widest_rewiring,
)

DARTS = get_genotype("DARTS_V2")
PUBLISHED = ("NASNet", "AmoebaNet", "ENAS", "DARTS_V2", "SNAS_MILD")


def test_conn_test_vector():
    variant = get_genotype("DARTS_CONN1")
    assert [idx for _, idx in variant.normal] == [1, 0, 1, 0, 1, 3, 4, 2]
    assert variant.name == "DARTS_CONN1"
    # Operations and concat lists are kept.
    for kind in ("normal", "reduce"):
        assert [op for op, _ in getattr(variant, kind)] == [op for op, _ in getattr(DARTS, kind)]
        assert getattr(variant, kind + "_concat") == getattr(DARTS, kind + "_concat")


def _reference_conn(genotype, seed):
    """The brief's CONN recipe on the legacy *global* RNG, written out independently."""
    np.random.seed(seed)
    normal, reduce, states = [], [], [0, 1]
    for i in range(len(genotype.normal)):
        normal.append(np.random.choice(states, 1)[0])
        reduce.append(np.random.choice(states, 1)[0])
        if i % 2 == 1:
            states.append(states[-1] + 1)
    return normal, reduce


@pytest.mark.parametrize("arch, seed", [("DARTS_V2", 1), ("DARTS_V2", 12), ("AmoebaNet", 4), ("SNAS_MILD", 9)])
def test_conn_variants_follow_the_recipe(arch, seed):
    genotype = get_genotype(arch)
    variant = conn_variant(genotype, seed)
    normal, reduce = _reference_conn(genotype, seed)
    assert list(variant.cell("normal").inputs) == normal
    assert list(variant.cell("reduce").inputs) == reduce


def _reference_ops(genotype, seed):
    """The brief's OPS recipe, written out independently."""
    np.random.seed(seed)
    normal = np.random.choice(7, len(genotype.normal))
    reduce = np.random.choice(7, len(genotype.reduce))
    return [DARTS_OPS_NO_NONE[j] for j in normal], [DARTS_OPS_NO_NONE[j] for j in reduce]


@pytest.mark.parametrize("arch, seed", [("DARTS_V2", 1), ("DARTS_V2", 7), ("ENAS", 7), ("NASNet", 3)])
def test_ops_variants_follow_the_recipe(arch, seed):
    genotype = get_genotype(arch)
    variant = ops_variant(genotype, seed)
    normal_ops, reduce_ops = _reference_ops(genotype, seed)
    assert [op for op, _ in variant.normal] == normal_ops
    assert [op for op, _ in variant.reduce] == reduce_ops
    assert variant.cell("normal").inputs == genotype.cell("normal").inputs
    assert variant.cell("reduce").inputs == genotype.cell("reduce").inputs
    assert variant.name == f"{arch}_OPS{seed}"


def test_named_variants_resolve_like_zoo_names():
    assert get_genotype("ENAS_OPS7") == ops_variant(get_genotype("ENAS"), 7)
    assert get_genotype("ENAS_OPS7").name == "ENAS_OPS7"
    assert get_genotype("DARTS_V2_CONN3") == get_genotype("DARTS_CONN3") == conn_variant(DARTS, 3)
    assert get_genotype("NASNet_ADAPT_WIDEST") == widest_rewiring(get_genotype("NASNet_ADAPT"))
    assert get_genotype("DARTS_DEEPEST").name == "DARTS_DEEPEST"
    assert parse_variant_name("DARTS_V2_OPS12") == ("DARTS_V2", "ops", 12)
    assert parse_variant_name("DARTS_V2") is None


@pytest.mark.parametrize("name, match", [
    ("Foo_CONN1", "unknown architecture 'Foo'"),
    ("DARTS_CONN99999999999", "out of range"),
    ("DARTS", "not a variant name"),
])
def test_named_variant_errors(name, match):
    with pytest.raises(GenotypeError, match=match):
        named_variant(name)


def test_global_rng_is_left_alone():
    np.random.seed(1234)
    expected = np.random.rand(3)
    np.random.seed(1234)
    conn_variant(DARTS, 5)
    ops_variant(DARTS, 5)
    stratified_variants(DARTS, per_band=1)
    assert np.array_equal(np.random.rand(3), expected)


@pytest.mark.parametrize("name", zoo_names())
def test_variants_of_every_zoo_genotype_are_valid(name):
    genotype = get_genotype(name)
    for seed in range(1, 6):
        for kind in ("conn", "ops"):
            variant = make_variant(genotype, kind, seed)  # validated on construction
            assert variant.name == f"{name}_{kind.upper()}{seed}"
    with pytest.raises(GenotypeError, match="unknown variant kind"):
        make_variant(genotype, "both", 1)


def _wiring(genotype, kind):
    return genotype.cell(kind).inputs


def test_widest_rewiring_against_the_published_adapt_cells():
    for arch, adapt in (("NASNet", "NASNet_ADAPT"), ("AmoebaNet", "AmoebaNet_ADAPT"),
                        ("SNAS_MILD", "SNAS_ADAPT"), ("ENAS", "ENAS_ADAPT")):
        widest, published = widest_rewiring(get_genotype(arch)), get_genotype(adapt)
        assert widest.name == f"{arch}_WIDEST"
        for kind in ("normal", "reduce"):
            assert widest.cell(kind).operations == get_genotype(arch).cell(kind).operations
            assert getattr(widest, kind + "_concat") == getattr(published, kind + "_concat")
            assert cell_width(widest.cell(kind)) == widest.cell(kind).num_nodes
            assert cell_depth(widest.cell(kind)) == 2
            differing = [e for e, (a, b) in enumerate(zip(_wiring(widest, kind), _wiring(published, kind)))
                         if a != b]
            # Identical edge for edge, except ENAS_ADAPT's node 3, which the authors
            # wired (0, 0) instead of (0, 1): same width and depth.
            assert differing == ([3] if (arch, kind) == ("ENAS", "normal") else []), (arch, kind)


@pytest.mark.parametrize("name", PUBLISHED)
def test_deepest_rewiring_is_a_chain(name):
    genotype = get_genotype(name)
    deepest = deepest_rewiring(genotype)
    for kind in ("normal", "reduce"):
        cell = deepest.cell(kind)
        assert cell.operations == genotype.cell(kind).operations
        assert cell_width(cell) == 1.0
        assert cell_depth(cell) == cell.num_nodes + 1  # the last node is concatenated in all five
        assert cell.inputs[:2] == genotype.cell(kind).inputs[:2]


def test_rewiring_one_cell_only():
    rewired = widest_rewiring(DARTS, cells=("normal",))
    assert rewired.reduce == DARTS.reduce and cell_width(rewired.cell("normal")) == 4.0
    with pytest.raises(GenotypeError):
        deepest_rewiring(DARTS, cells=("middle",))


def test_stratified_darts_study():
    chosen = stratified_variants(DARTS, per_band=3, seed=0)
    assert len(chosen) == 12
    widths = [cell_width(g.cell("normal")) for g in chosen]
    depths = [cell_depth(g.cell("normal")) for g in chosen]
    assert widths == [2.0] * 3 + [2.5] * 3 + [3.0] * 3 + [3.5] * 3
    for i in range(11):  # width rises; within a width, depth falls
        assert widths[i] < widths[i + 1] or depths[i] >= depths[i + 1]
    normals = {g.normal for g in chosen}
    assert len(normals) == 12 and DARTS.normal not in normals
    for g in chosen:  # every variant regenerates from its name
        assert get_genotype(g.name) == g
    assert [g.name for g in stratified_variants(DARTS, per_band=3, seed=0)] == [g.name for g in chosen]
    assert [g.name for g in stratified_variants(DARTS, per_band=3, seed=1)] != [g.name for g in chosen]


def test_stratified_other_bands_and_cells():
    extremes = stratified_variants(DARTS, per_band=2, bands=(1, 4), seed=3)
    assert [cell_width(g.cell("normal")) for g in extremes] == [1.0, 1.0, 4.0, 4.0]
    reduce = stratified_variants(get_genotype("ENAS"), per_band=1, bands=(2.5, 4), cell="reduce")
    assert [cell_width(g.cell("reduce")) for g in reduce] == [2.5, 4.0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(bands=(4.5,)), "impossible"),
    (dict(bands=(2.2,)), "impossible"),
    (dict(bands=()), "impossible"),
    (dict(per_band=0), "at least 1"),
    (dict(cell="middle"), "unknown cell"),
    (dict(bands=(4,), per_band=300, max_draws=400), "too few distinct variants"),
])
def test_stratified_errors(kwargs, match):
    with pytest.raises(GenotypeError, match=match):
        stratified_variants(DARTS, **kwargs)


def test_possible_widths():
    assert possible_widths(4) == (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
