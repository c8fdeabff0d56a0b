"""Genotypes: the immutable description of a normal and a reduction cell.

A cell has two input nodes (0: output of the cell two back, 1: output of the
previous cell) and N intermediate nodes (2 .. N+1).  Each intermediate node
sums two operations, each applied to one earlier node; the cell output
concatenates the nodes in its concat list.

Genotypes are read from JSON or from the ``Genotype(normal=[...], ...)`` repr
that DARTS prints.  The repr is parsed with :mod:`ast` and walked by hand: it
is never evaluated.  The published genotypes (the zoo) are here by name;
resolving what a user may pass (variant names, files, strings) is
:mod:`tfnas.resolve`.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Mapping

from tfnas.operations import (DARTS_OPS, DARTS_OPS_NO_NONE, ENAS_OPS, KNOWN_OPS,  # noqa: F401
                              NASNET_EXTRA_OPS, GenotypeError, operation_spec)

__all__ = [
    "DARTS_OPS", "DARTS_OPS_NO_NONE", "NASNET_EXTRA_OPS", "ENAS_OPS", "KNOWN_OPS",
    "GenotypeError", "Cell", "Genotype", "parse_genotype", "zoo_names", "zoo_genotype",
]


def _is_index(value) -> bool:
    # bool is an int subclass but never a node index; numpy integers are fine.
    return not isinstance(value, bool) and hasattr(value, "__index__")


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class Cell:
    """One cell: ``edges`` is a tuple of ``(operation, input_index)`` pairs,
    two per intermediate node in node order; ``concat`` lists output nodes."""

    edges: tuple
    concat: tuple
    kind: str = field(default="cell", compare=False)

    def __post_init__(self):
        where = f"{self.kind} cell"
        try:
            edges = tuple(self.edges)
            concat = tuple(self.concat)
        except TypeError:
            raise GenotypeError(f"{where}: edges and concat must be lists") from None
        normalised = []
        for e, pair in enumerate(edges):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2 \
                    or not isinstance(pair[0], str) or not _is_index(pair[1]):
                raise GenotypeError(
                    f"{where}, edge {e} (node {2 + e // 2}): expected an "
                    f"(operation, input index) pair, got {_short(pair)}")
            normalised.append((pair[0], int(pair[1])))
        for c in concat:
            if not _is_index(c):
                raise GenotypeError(f"{where}: concat entry {_short(c)} is not a node index")
        object.__setattr__(self, "edges", tuple(normalised))
        object.__setattr__(self, "concat", tuple(int(c) for c in concat))
        self.validate()

    @property
    def num_nodes(self) -> int:
        """Number of intermediate nodes."""
        return len(self.edges) // 2

    def node_inputs(self, node: int) -> tuple:
        """The two ``(operation, input)`` edges of intermediate node ``node``
        (numbered from 2, as in the genotype)."""
        j = node - 2
        return self.edges[2 * j: 2 * j + 2]

    def validate(self) -> None:
        where = f"{self.kind} cell"
        if len(self.edges) == 0:
            raise GenotypeError(f"{where}: has no edges")
        if len(self.edges) % 2:
            raise GenotypeError(
                f"{where}: has {len(self.edges)} edge{'s' if len(self.edges) != 1 else ''}; "
                f"every intermediate node needs exactly 2")
        for e, (op, idx) in enumerate(self.edges):
            node = 2 + e // 2
            if op not in KNOWN_OPS:
                try:
                    operation_spec(op)
                except GenotypeError as err:
                    raise GenotypeError(f"{where}, edge {e} (node {node}): {err}") from None
            if idx < 0:
                raise GenotypeError(f"{where}, edge {e} (node {node}): negative input index {idx}")
            if idx >= node:
                what = "itself" if idx == node else "a later node"
                raise GenotypeError(
                    f"{where}, edge {e} (node {node}): input index {idx} points at {what}; "
                    f"inputs of node {node} must be in 0..{node - 1}")
        if not self.concat:
            raise GenotypeError(f"{where}: empty concat list")
        top = 2 + self.num_nodes
        seen = set()
        for c in self.concat:
            if not 2 <= c < top:
                raise GenotypeError(
                    f"{where}: concat entry {c} out of range; intermediate nodes are 2..{top - 1}")
            if c in seen:
                raise GenotypeError(f"{where}: duplicate concat entry {c}")
            seen.add(c)

    @property
    def operations(self) -> tuple:
        return tuple(op for op, _ in self.edges)

    @property
    def inputs(self) -> tuple:
        return tuple(idx for _, idx in self.edges)

    def loose_ends(self) -> tuple:
        """Intermediate nodes no other node consumes (the NASNet concat rule)."""
        used = set(self.inputs)
        return tuple(n for n in range(2, 2 + self.num_nodes) if n not in used)


@dataclass(frozen=True)
class Genotype:
    """A normal and a reduction cell, with DARTS-compatible attribute names
    (``normal``, ``normal_concat``, ``reduce``, ``reduce_concat``)."""

    normal: tuple
    normal_concat: tuple
    reduce: tuple
    reduce_concat: tuple
    name: str | None = field(default=None, compare=False)

    def __post_init__(self):
        # Normalise and validate through Cell; keep plain tuples on the genotype.
        for kind in ("normal", "reduce"):
            cell = Cell(getattr(self, kind), getattr(self, kind + "_concat"), kind=kind)
            object.__setattr__(self, kind, cell.edges)
            object.__setattr__(self, kind + "_concat", cell.concat)

    def cell(self, kind: str) -> Cell:
        if kind not in ("normal", "reduce"):
            raise ValueError(f"cell kind must be 'normal' or 'reduce', not {kind!r}")
        return Cell(getattr(self, kind), getattr(self, kind + "_concat"), kind=kind)

    @property
    def normal_cell(self) -> Cell:
        return self.cell("normal")

    @property
    def reduce_cell(self) -> Cell:
        return self.cell("reduce")

    def with_name(self, name: str | None) -> "Genotype":
        return Genotype(self.normal, self.normal_concat, self.reduce, self.reduce_concat, name=name)

    def replace(self, **changes) -> "Genotype":
        fields = dict(normal=self.normal, normal_concat=self.normal_concat,
                      reduce=self.reduce, reduce_concat=self.reduce_concat, name=self.name)
        fields.update(changes)
        return Genotype(**fields)

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "normal": [[op, idx] for op, idx in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, idx] for op, idx in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_repr(self) -> str:
        def edges(es):
            return "[" + ", ".join(f"({op!r}, {idx})" for op, idx in es) + "]"
        return (f"Genotype(normal={edges(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={edges(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    __str__ = to_repr

    @classmethod
    def from_dict(cls, data: Mapping, name: str | None = None) -> "Genotype":
        if not isinstance(data, Mapping):
            raise GenotypeError(f"a genotype must be a JSON object, not {type(data).__name__}")
        if name is None and isinstance(data.get("name"), str):
            name = data["name"]
        if "genotype" in data and "normal" not in data:  # e.g. a search output file
            inner = data["genotype"]
            if isinstance(inner, str):  # the DARTS repr stored as a string
                return parse_genotype(inner, name=name)
            return cls.from_dict(inner, name=name)
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in data]
        if missing:
            raise GenotypeError(f"genotype is missing {', '.join(missing)}")
        kwargs = {}
        for kind in ("normal", "reduce"):
            kwargs[kind] = _edge_list(data[kind], kind)
            kwargs[kind + "_concat"] = _int_list(data[kind + "_concat"], kind + "_concat")
        return cls(**kwargs, name=name)


def _edge_list(value, kind: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise GenotypeError(f"{kind} cell: edges must be a list of (operation, input) pairs, "
                            f"got {_short(value)}")
    out = []
    for e, pair in enumerate(value):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not isinstance(pair[0], str) or not _is_index(pair[1])):
            raise GenotypeError(
                f"{kind} cell, edge {e} (node {2 + e // 2}): expected an "
                f"(operation, input index) pair, got {_short(pair)}")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _int_list(value, what: str) -> tuple:
    if not isinstance(value, (list, tuple)) or not all(_is_index(v) for v in value):
        raise GenotypeError(f"{what}: expected a list of node indices, got {_short(value)}")
    return tuple(value)


# -- parsing ---------------------------------------------------------------

_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
# Bound on range() arguments in a repr: DARTS prints range(2, 6).
_RANGE_LIMIT = 10_000


def _literal(node: ast.AST, where: str):
    """Turn a restricted AST (lists, tuples, strings, ints, ``range(a, b)``)
    into Python values, without evaluating anything; ``where`` names the
    field or edge for error messages."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and isinstance(node.operand, ast.Constant) and _is_index(node.operand.value):
        return -node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, where) for e in node.elts]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and not node.keywords and 1 <= len(node.args) <= 3:
        args = [_literal(a, where) for a in node.args]
        bounded = all(_is_index(a) and abs(a) < _RANGE_LIMIT for a in args)
        if bounded and not (len(args) == 3 and args[2] == 0):  # range step 0 is an error
            return list(range(*args))
    try:
        text = ast.unparse(node)
    except Exception:  # noqa: BLE001 - only used for the message
        text = type(node).__name__
    raise GenotypeError(f"{where}: unsupported expression {_short(text)} "
                        f"(only lists, (operation, index) tuples, ints, strings and range())")


def _field_literal(node: ast.AST, field_name: str):
    if field_name in ("normal", "reduce") and isinstance(node, (ast.List, ast.Tuple)):
        # Walk edge by edge so an error names the cell and the edge.
        return [_literal(e, f"{field_name} cell, edge {i} (node {2 + i // 2})")
                for i, e in enumerate(node.elts)]
    where = f"{field_name} cell" if field_name in ("normal", "reduce") else field_name
    return _literal(node, where)


def _parse_repr(text: str) -> dict:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        where = f" (column {err.offset})" if err.offset else ""
        raise GenotypeError(f"cannot parse genotype: {err.msg}{where}") from None
    except (ValueError, RecursionError, MemoryError) as err:  # e.g. null bytes, deep nesting
        raise GenotypeError(f"cannot parse genotype: {err}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "Genotype"):
        raise GenotypeError("expected JSON or Genotype(normal=[...], normal_concat=[...], ...)")
    if len(call.args) > len(_FIELDS):
        raise GenotypeError(f"Genotype(...) takes {len(_FIELDS)} fields, got {len(call.args)}")
    data = {_FIELDS[i]: _field_literal(a, _FIELDS[i]) for i, a in enumerate(call.args)}
    for kw in call.keywords:
        if kw.arg not in _FIELDS:
            raise GenotypeError(f"Genotype(...) has an unknown field {kw.arg!r}; "
                                f"fields: {', '.join(_FIELDS)}")
        if kw.arg in data:
            raise GenotypeError(f"Genotype(...) gives {kw.arg} twice")
        data[kw.arg] = _field_literal(kw.value, kw.arg)
    return data


def parse_genotype(text: str, name: str | None = None) -> Genotype:
    """Parse a genotype from JSON or from the DARTS ``Genotype(...)`` repr.
    Any problem raises :class:`GenotypeError` naming the cell, edge and problem."""
    if not isinstance(text, str) or not text.strip():
        raise GenotypeError("empty genotype string")
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise GenotypeError(f"invalid genotype JSON: {err.msg} (line {err.lineno}, "
                                f"column {err.colno})") from None
        except RecursionError:
            raise GenotypeError("invalid genotype JSON: nested too deeply") from None
        return Genotype.from_dict(data, name=name)
    return Genotype.from_dict(_parse_repr(stripped), name=name)


# -- the zoo ---------------------------------------------------------------

@lru_cache(maxsize=1)
def _zoo() -> dict:
    raw = json.loads(resources.files("tfnas").joinpath("zoo/published.json").read_text())
    zoo = {name: Genotype.from_dict(data, name=name) for name, data in raw.items()}
    zoo["DARTS"] = zoo["DARTS_V2"].with_name("DARTS")  # DARTS is an alias of DARTS_V2
    return zoo


def zoo_names(include_aliases: bool = False) -> list:
    """Names of the published genotypes, in the order of the published file."""
    return [n for n in _zoo() if include_aliases or n != "DARTS"]


def zoo_genotype(name: str) -> Genotype:
    """A published genotype by name (``DARTS`` is ``DARTS_V2``); variants and
    files resolve through :func:`tfnas.resolve.resolve_genotype`."""
    zoo = _zoo()
    if name not in zoo:
        raise GenotypeError(f"unknown genotype {name!r}; known: {', '.join(zoo_names(True))}")
    return zoo[name]
