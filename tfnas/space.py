"""The cell space: operation set, intermediate-node count and concat rule.

One :class:`CellSpace` is shared by the search networks (which put a mixed
operation on every possible edge) and by derivation (which turns searched
weights into a :class:`~tfnas.genotypes.Genotype`), so searching the ENAS
5-operation, 5-node space is a configuration, not new code.
"""

from __future__ import annotations

from dataclasses import dataclass

from tfnas.operations import DARTS_OPS, ENAS_OPS, KNOWN_OPS

CONCAT_RULES = ("all", "loose_ends")


@dataclass(frozen=True)
class CellSpace:
    operations: tuple = DARTS_OPS
    num_nodes: int = 4
    concat: str = "all"  # "all": every intermediate node; "loose_ends": unused nodes only

    def __post_init__(self):
        object.__setattr__(self, "operations", tuple(self.operations))
        unknown = [op for op in self.operations if op not in KNOWN_OPS]
        if unknown:
            raise ValueError(f"cell space: unknown operations {unknown}")
        if len(set(self.operations)) != len(self.operations) or not self.operations:
            raise ValueError("cell space: operations must be a non-empty list without repeats")
        if self.num_nodes < 1:
            raise ValueError("cell space: num_nodes must be >= 1")
        if self.concat not in CONCAT_RULES:
            raise ValueError(f"cell space: concat must be one of {CONCAT_RULES}")

    @property
    def num_edges(self) -> int:
        """Edges of the fully connected search cell (14 for 4 nodes)."""
        return sum(2 + i for i in range(self.num_nodes))

    def edge_inputs(self):
        """``(node, input)`` for every search-cell edge, in the reference order."""
        return [(2 + i, j) for i in range(self.num_nodes) for j in range(2 + i)]

    def concat_of(self, edges) -> tuple:
        """The concat list of a derived cell with these ``(op, input)`` edges."""
        nodes = range(2, 2 + self.num_nodes)
        if self.concat == "all":
            return tuple(nodes)
        used = {idx for _, idx in edges}
        return tuple(n for n in nodes if n not in used)

    def to_dict(self) -> dict:
        return {"operations": list(self.operations), "num_nodes": self.num_nodes,
                "concat": self.concat}

    @classmethod
    def from_dict(cls, data) -> "CellSpace":
        return cls(tuple(data["operations"]), int(data["num_nodes"]), data.get("concat", "all"))


DARTS_SPACE = CellSpace(DARTS_OPS, 4, "all")
# ENAS micro: 5 operations, 5 nodes, loose ends concatenated.
ENAS_SPACE = CellSpace(ENAS_OPS, 5, "loose_ends")
SPACES = {"darts": DARTS_SPACE, "enas": ENAS_SPACE}
