"""Derive a discrete genotype from searched alphas (the DARTS rule).

For every intermediate node keep the two incoming edges whose strongest
non-``none`` operation weighs most, and on each the strongest non-``none``
operation; the concat list follows the space's rule (``all`` intermediate
nodes, or the ``loose_ends`` no other node consumes).  Ties go to the lower
index, as the reference's stable sort does.
"""

from __future__ import annotations

import numpy as np

from tfnas.genotypes import Genotype
from tfnas.space import DARTS_SPACE, CellSpace
from tfnas.topology import summarize

__all__ = ["softmax", "derive_cell", "derive_genotype", "genotype_record"]


def softmax(alphas, axis=-1) -> np.ndarray:
    a = np.asarray(alphas, dtype=np.float64)
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def derive_cell(weights, space: CellSpace = DARTS_SPACE) -> tuple:
    """``(edges, concat)`` of one cell from its per-edge operation weights
    (shape ``(num_edges, num_operations)``, e.g. softmax(alpha))."""
    weights = np.asarray(weights, dtype=np.float64)
    expected = (space.num_edges, len(space.operations))
    if weights.shape != expected:
        raise ValueError(f"alphas have shape {weights.shape}; this cell space needs {expected}")
    usable = [k for k, op in enumerate(space.operations) if op != "none"]
    if not usable:
        raise ValueError("cell space has no operation besides 'none'")
    edges = []
    start = 0
    for i in range(space.num_nodes):
        n_inputs = 2 + i
        rows = weights[start:start + n_inputs][:, usable]
        strength = rows.max(axis=1)
        best_inputs = sorted(range(n_inputs), key=lambda j: -strength[j])[:2]
        for j in best_inputs:
            k = usable[int(np.argmax(rows[j]))]
            edges.append((space.operations[k], j))
        start += n_inputs
    return tuple(edges), space.concat_of(edges)


def derive_genotype(alphas_normal, alphas_reduce, space: CellSpace = DARTS_SPACE,
                    name: str | None = None, apply_softmax: bool = True) -> Genotype:
    """The genotype DARTS derives from raw alphas (softmaxed first unless
    ``apply_softmax=False``, e.g. for weights that already are)."""
    if apply_softmax:
        alphas_normal, alphas_reduce = softmax(alphas_normal), softmax(alphas_reduce)
    normal, normal_concat = derive_cell(alphas_normal, space)
    reduce, reduce_concat = derive_cell(alphas_reduce, space)
    return Genotype(normal, normal_concat, reduce, reduce_concat, name=name)


def genotype_record(genotype: Genotype) -> dict:
    """JSON-ready ``{genotype, repr, normal_width, normal_depth, reduce_width,
    reduce_depth}`` (width in units of c)."""
    summary = summarize(genotype)
    return {"genotype": genotype.to_dict(), "repr": genotype.to_repr(),
            **{k: v for k, v in summary.items() if k != "name"}}
