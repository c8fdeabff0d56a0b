"""Topology variants of a genotype.

- **Connection variants** (``<ARCH>_CONN<k>``) keep every operation and
  re-draw every input index; **operation variants** (``<ARCH>_OPS<k>``) keep
  the wiring and re-draw every operation.  Both reproduce the authors'
  released generators exactly: NumPy's legacy RNG seeded with ``k``, draws
  in the authors' order (through a private ``RandomState(k)``, the same
  stream as ``numpy.random.seed(k)``, so the caller's global RNG is left
  alone).
- :func:`stratified_variants` draws k connection variants per width band of
  the normal cell (the paper's DARTS study: C1..C12 at widths 2, 2.5, 3, 3.5).
- :func:`widest_rewiring` (every node fed by the two input nodes, like the
  published ``*_ADAPT`` genotypes) and :func:`deepest_rewiring` (a chain),
  operations kept.

Variant names resolve like zoo names (:func:`tfnas.resolve.get_genotype`):
``get_genotype("DARTS_CONN3")``, ``get_genotype("ENAS_OPS7")``,
``get_genotype("NASNet_WIDEST")``.
"""

from __future__ import annotations

import re

import numpy as np

from tfnas.genotypes import DARTS_OPS_NO_NONE, Genotype, GenotypeError, zoo_genotype, zoo_names
from tfnas import topology

__all__ = [
    "VARIANT_KINDS", "REWIRINGS", "DARTS_STUDY_BANDS", "conn_variant", "ops_variant",
    "make_variant", "make_variants", "named_variant", "parse_variant_name",
    "widest_rewiring", "deepest_rewiring", "stratified_variants", "possible_widths",
]

VARIANT_KINDS = ("conn", "ops")
REWIRINGS = ("widest", "deepest")
# Normal-cell width bands of the paper's DARTS connection-variant study.
DARTS_STUDY_BANDS = (2.0, 2.5, 3.0, 3.5)
_CELLS = ("normal", "reduce")
_SEED_LIMIT = 2 ** 32  # numpy.random.seed accepts 0 <= seed < 2**32

_NAME = re.compile(r"^(?P<arch>.+?)_(?:(?P<kind>CONN|OPS)(?P<seed>\d+)|(?P<rewiring>WIDEST|DEEPEST))$")


def _legacy_rng(seed: int) -> np.random.RandomState:
    """The authors call ``numpy.random.seed(k)`` and then draw from the
    legacy global RNG; a ``RandomState(k)`` yields the identical stream
    (the global RNG is a ``RandomState``) and leaves the caller's global
    RNG untouched."""
    if not 0 <= seed < _SEED_LIMIT:
        raise GenotypeError(f"variant seed {seed} out of range; use 0..{_SEED_LIMIT - 1}")
    return np.random.RandomState(seed)


def _base_name(genotype: Genotype) -> str:
    return genotype.name or "custom"


def conn_variant(genotype: Genotype, seed: int, name: str | None = None) -> Genotype:
    """The authors' ``<ARCH>_CONN<seed>``: operations and concat lists kept,
    every input index re-drawn.  For each edge i: the normal cell's input,
    then the reduce cell's input, each ``numpy.random.choice(states, 1)``;
    after every odd i the next node joins ``states``."""
    seed = int(seed)
    if len(genotype.normal) != len(genotype.reduce):
        raise GenotypeError(
            f"connection variants need cells with equal edge counts; normal has "
            f"{len(genotype.normal)}, reduce has {len(genotype.reduce)}")
    normal, reduce = [], []
    rng = _legacy_rng(seed)
    states = [0, 1]
    for i in range(len(genotype.normal)):
        normal_input = int(rng.choice(states, 1)[0])
        reduce_input = int(rng.choice(states, 1)[0])
        normal.append((genotype.normal[i][0], normal_input))
        reduce.append((genotype.reduce[i][0], reduce_input))
        if i % 2 == 1:
            states.append(states[-1] + 1)
    return genotype.replace(normal=tuple(normal), reduce=tuple(reduce),
                            name=name or f"{_base_name(genotype)}_CONN{seed}")


def ops_variant(genotype: Genotype, seed: int, name: str | None = None) -> Genotype:
    """The authors' ``<ARCH>_OPS<seed>``: wiring kept; operations drawn as
    ``numpy.random.choice(7, n_edges)`` for the normal cell, then for the
    reduce cell, index j meaning the j-th DARTS operation without ``none``."""
    seed = int(seed)
    rng = _legacy_rng(seed)
    normal_ops = rng.choice(len(DARTS_OPS_NO_NONE), len(genotype.normal))
    reduce_ops = rng.choice(len(DARTS_OPS_NO_NONE), len(genotype.reduce))
    normal = tuple((DARTS_OPS_NO_NONE[j], idx) for j, (_, idx) in zip(normal_ops, genotype.normal))
    reduce = tuple((DARTS_OPS_NO_NONE[j], idx) for j, (_, idx) in zip(reduce_ops, genotype.reduce))
    return genotype.replace(normal=normal, reduce=reduce,
                            name=name or f"{_base_name(genotype)}_OPS{seed}")


def make_variant(genotype: Genotype, kind: str, seed: int) -> Genotype:
    """``kind`` is ``"conn"`` or ``"ops"``."""
    if kind == "conn":
        return conn_variant(genotype, seed)
    if kind == "ops":
        return ops_variant(genotype, seed)
    raise GenotypeError(f"unknown variant kind {kind!r}; use one of {', '.join(VARIANT_KINDS)}")


def make_variants(genotype: Genotype, kind: str, seeds) -> list:
    return [make_variant(genotype, kind, s) for s in seeds]


# -- rewirings ---------------------------------------------------------------

def _rewire(genotype: Genotype, rewire_cell, suffix: str, cells) -> Genotype:
    unknown = [c for c in cells if c not in _CELLS]
    if unknown:
        raise GenotypeError(f"unknown cell kind(s) {unknown}; use normal and/or reduce")
    changes = {kind: rewire_cell(genotype.cell(kind)) for kind in cells}
    return genotype.replace(**changes, name=f"{_base_name(genotype)}_{suffix}")


def _widest_edges(cell) -> tuple:
    # Every node reads the two inputs in the order the cell's first node
    # reads them (this reproduces the published NASNet/AmoebaNet/SNAS _ADAPT
    # cells edge for edge); a first node reading one input twice gives (0, 1).
    first = cell.inputs[:2]
    pattern = first if sorted(first) == [0, 1] else (0, 1)
    return tuple((op, pattern[e % 2]) for e, (op, _) in enumerate(cell.edges))


def _deepest_edges(cell) -> tuple:
    # A chain: node 2 keeps its (input-node) inputs; node j reads node j-1 twice.
    return tuple((op, idx if e < 2 else 2 + e // 2 - 1) for e, (op, idx) in enumerate(cell.edges))


def widest_rewiring(genotype: Genotype, cells=_CELLS) -> Genotype:
    """Widest-shallowest rewiring: every intermediate node fed by the two
    input nodes (width = number of nodes, depth 2); operations and concat
    lists kept.  Named ``<ARCH>_WIDEST``."""
    return _rewire(genotype, _widest_edges, "WIDEST", cells)


def deepest_rewiring(genotype: Genotype, cells=_CELLS) -> Genotype:
    """Deepest-narrowest rewiring: a chain (node j fed twice by node j-1; width
    1, depth number of nodes + 1 when the last node is concatenated);
    operations and concat lists kept.  Named ``<ARCH>_DEEPEST``."""
    return _rewire(genotype, _deepest_edges, "DEEPEST", cells)


# -- names -------------------------------------------------------------------

def parse_variant_name(name: str):
    """``"DARTS_CONN3"`` -> ``("DARTS", "conn", 3)``;
    ``"NASNet_WIDEST"`` -> ``("NASNet", "widest", None)``; else ``None``."""
    match = _NAME.match(name)
    if not match:
        return None
    if match["rewiring"]:
        return match["arch"], match["rewiring"].lower(), None
    return match["arch"], match["kind"].lower(), int(match["seed"])


def named_variant(name: str) -> Genotype:
    """Resolve ``<ARCH>_CONN<k>``, ``<ARCH>_OPS<k>``, ``<ARCH>_WIDEST`` or
    ``<ARCH>_DEEPEST`` where ARCH is a zoo name (``DARTS`` = ``DARTS_V2``)."""
    parsed = parse_variant_name(name)
    if parsed is None:
        raise GenotypeError(f"{name!r} is not a variant name (<ARCH>_CONN<k>, <ARCH>_OPS<k>, "
                            f"<ARCH>_WIDEST, <ARCH>_DEEPEST)")
    arch, kind, seed = parsed
    if arch not in zoo_names(include_aliases=True):
        raise GenotypeError(f"variant {name!r}: unknown architecture {arch!r}; "
                            f"known: {', '.join(zoo_names(True))}")
    base = zoo_genotype(arch)
    if kind == "widest":
        return widest_rewiring(base)
    if kind == "deepest":
        return deepest_rewiring(base)
    return make_variant(base, kind, seed).with_name(name)


# -- stratified sampling -----------------------------------------------------

def possible_widths(num_nodes: int) -> tuple:
    """Widths a cell with ``num_nodes`` intermediate nodes can have: the first
    node always reads the inputs (1c); every other node adds 0, 0.5 or 1."""
    return tuple(1.0 + 0.5 * k for k in range(2 * (num_nodes - 1) + 1))


def stratified_variants(genotype: Genotype, per_band: int = 3, bands=DARTS_STUDY_BANDS,
                        seed: int = 0, cell: str = "normal", max_draws: int = 20000) -> list:
    """``per_band`` connection variants for every width band of ``cell``.

    Candidates are the authors' ``<ARCH>_CONN<k>`` variants, k taken in an
    order shuffled by ``seed`` (a private RNG; the global one is untouched),
    so every returned genotype is reproducible from its name.  Variants whose
    ``cell`` wiring equals the original's or an already chosen one are
    skipped.  The result is sorted so width rises and, within a width, depth
    falls (the paper's C1..C12 order).
    """
    per_band = int(per_band)
    if per_band < 1:
        raise GenotypeError(f"per_band must be at least 1, not {per_band}")
    if cell not in _CELLS:
        raise GenotypeError(f"unknown cell kind {cell!r}; use normal or reduce")
    bands = sorted({float(b) for b in bands})
    allowed = possible_widths(genotype.cell(cell).num_nodes)
    impossible = [b for b in bands if b not in allowed]
    if not bands or impossible:
        raise GenotypeError(
            f"width band(s) {impossible or bands} impossible for a {cell} cell of "
            f"{genotype.cell(cell).num_nodes} nodes; possible: {', '.join(f'{w:g}' for w in allowed)}")
    chosen = {b: [] for b in bands}
    seen = {genotype.cell(cell).edges}
    # Authors' seeds 1..max_draws in a seed-determined order.
    order = np.random.RandomState(int(seed) % _SEED_LIMIT).permutation(max_draws) + 1
    for k in order:
        variant = conn_variant(genotype, int(k))
        wiring = variant.cell(cell).edges
        width = topology.cell_width(variant.cell(cell))
        if width not in chosen or len(chosen[width]) >= per_band or wiring in seen:
            continue
        seen.add(wiring)
        chosen[width].append(variant)
        if all(len(v) >= per_band for v in chosen.values()):
            break
    short = {b: len(v) for b, v in chosen.items() if len(v) < per_band}
    if short:
        raise GenotypeError(
            f"found too few distinct variants in {max_draws} draws for width band(s) "
            + ", ".join(f"{b:g} ({n} of {per_band})" for b, n in short.items()))

    def order_key(g):
        c = g.cell(cell)
        return topology.cell_width(c), -topology.cell_depth(c), g.name
    return sorted((g for group in chosen.values() for g in group), key=order_key)
