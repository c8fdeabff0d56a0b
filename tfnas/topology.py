"""Width and depth of a cell (Shu, Wang & Cai, ICLR 2020, section 3).

- **Width** (in units of c, the channel count of one intermediate node): the
  sum over *all* intermediate nodes of the fraction of the node's incoming
  edges that start at an input node.  Every edge from input node 0 or 1 adds
  0.5; a node fed only by other intermediate nodes adds 0.
- **Depth**: the number of edges on the longest path from an input node to
  the cell output, counting the final edge into the output.  Only the nodes
  in the concat list feed the output, so a node outside it (e.g. AmoebaNet's
  nodes 2 and 3) contributes only through the nodes that consume it.

Published normal cells: NASNet 5/2, AmoebaNet 4/4, ENAS 5/2, DARTS_V2 3.5/3,
SNAS_MILD 4/2.
"""

from __future__ import annotations

from tfnas.genotypes import Cell, Genotype

__all__ = ["INPUT_NODES", "node_widths", "node_depths", "node_breakdown",
           "cell_width", "cell_depth", "summarize", "summary_row"]

# Indices of the two cell inputs: c_{k-2} and c_{k-1}.
INPUT_NODES = (0, 1)


def node_widths(cell: Cell) -> dict:
    """``{node: width contribution}`` for every intermediate node (2, 3, ...):
    the fraction of its incoming edges that start at an input node."""
    widths = {}
    for node in range(2, 2 + cell.num_nodes):
        edges = cell.node_inputs(node)
        from_inputs = sum(1 for _, idx in edges if idx in INPUT_NODES)
        widths[node] = from_inputs / len(edges)
    return widths


def node_depths(cell: Cell) -> dict:
    """``{node: depth}``: edges on the longest path from an input node to
    each node (input nodes have depth 0)."""
    depths = {n: 0 for n in INPUT_NODES}
    # Nodes only consume earlier nodes, so node order is a topological order.
    for node in range(2, 2 + cell.num_nodes):
        depths[node] = 1 + max(depths[idx] for _, idx in cell.node_inputs(node))
    return depths


def cell_width(cell: Cell) -> float:
    """Width of ``cell`` in units of c (a float: 3.5 means 3.5c)."""
    return float(sum(node_widths(cell).values()))


def cell_depth(cell: Cell) -> int:
    """Edges on the longest input-to-output path, including the edge from a
    concatenated node into the output."""
    depths = node_depths(cell)
    return 1 + max(depths[n] for n in cell.concat)


def node_breakdown(cell: Cell) -> list:
    """One dict per intermediate node: ``node``, its ``edges`` (operation,
    input) pairs, ``width`` contribution, ``depth`` from the inputs, whether
    it is ``in_concat``, and the nodes that ``consumers`` feed on it."""
    widths, depths = node_widths(cell), node_depths(cell)
    rows = []
    for node in range(2, 2 + cell.num_nodes):
        rows.append({
            "node": node,
            "edges": [list(e) for e in cell.node_inputs(node)],
            "width": widths[node],
            "depth": depths[node],
            "in_concat": node in cell.concat,
            "consumers": sorted({2 + e // 2 for e, idx in enumerate(cell.inputs) if idx == node}),
        })
    return rows


def summarize(genotype: Genotype) -> dict:
    """``{name, normal_width, normal_depth, reduce_width, reduce_depth}``."""
    normal, reduce = genotype.cell("normal"), genotype.cell("reduce")
    return {
        "name": genotype.name,
        "normal_width": cell_width(normal),
        "normal_depth": cell_depth(normal),
        "reduce_width": cell_width(reduce),
        "reduce_depth": cell_depth(reduce),
    }


def summary_row(genotype: Genotype, name: str | None = None, extra: dict | None = None) -> dict:
    """:func:`summarize` with an optional display ``name`` and extra keys
    (e.g. parameter counts) appended: the row format of ``analyze.py topology``."""
    row = summarize(genotype)
    if name is not None:
        row["name"] = name
    if extra:
        row.update(extra)
    return row
