"""Genotype names and specs, resolved: what a user may pass as ``--genotype``.

- :func:`get_genotype`: a zoo name (``DARTS_V2``, ``ENAS``, ...) or a
  variant of one (``DARTS_CONN3``, ``ENAS_OPS7``, ``NASNet_WIDEST``);
- :func:`resolve_genotype`: that, or a path to a JSON / ``Genotype(...)``
  file, or the JSON / repr text itself (parsed, never evaluated).

This module sits above :mod:`tfnas.variants` (variant names need the
generators), which sits above :mod:`tfnas.genotypes`.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from tfnas.genotypes import Genotype, GenotypeError, parse_genotype, zoo_genotype, zoo_names
from tfnas.variants import named_variant, parse_variant_name

__all__ = ["get_genotype", "resolve_genotype", "as_genotypes", "genotype_from_config"]


def get_genotype(name: str) -> Genotype:
    """A zoo genotype (``DARTS_V2``, ``ENAS``, …) or a variant of one
    (``DARTS_CONN3``, ``ENAS_OPS7``)."""
    if name in zoo_names(include_aliases=True):
        return zoo_genotype(name)
    parsed = parse_variant_name(name)
    if parsed and parsed[0] in zoo_names(include_aliases=True):
        return named_variant(name)
    raise GenotypeError(
        f"unknown genotype {name!r}; known: {', '.join(zoo_names(True))} "
        f"and their variants <NAME>_CONN<k>, <NAME>_OPS<k>, <NAME>_WIDEST, <NAME>_DEEPEST")


def _read_genotype_file(path: str) -> Genotype:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise GenotypeError(f"cannot read genotype file {path}: {err}") from None
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        genotype = parse_genotype(text)
    except GenotypeError as err:
        raise GenotypeError(f"{path}: {err}") from None
    # A name stored in the file wins; else the file's stem names it.
    return genotype if genotype.name else genotype.with_name(stem)


def resolve_genotype(spec) -> Genotype:
    """Whatever a user may pass as ``--genotype``: a zoo or variant name, a
    path to a JSON or repr file, or a JSON or repr string."""
    if isinstance(spec, Genotype):
        return spec
    spec = str(spec).strip()
    if not spec:
        raise GenotypeError("empty genotype")
    if spec.startswith("{") or spec.startswith("Genotype("):
        return parse_genotype(spec)
    if os.path.isfile(spec):
        return _read_genotype_file(spec)
    if re.fullmatch(r"[A-Za-z][\w.-]*", spec) and not spec.endswith((".json", ".txt")):
        return get_genotype(spec)
    raise GenotypeError(f"genotype {spec!r} is not a known name, an existing file, "
                        f"JSON or a Genotype(...) repr")


def as_genotypes(specs: Iterable[str]) -> list:
    return [resolve_genotype(s) for s in specs]


def genotype_from_config(resolved: dict | None, spec=None) -> Genotype:
    """The genotype a run's configuration names: its stored resolution
    (``{"normal": ..., "name": ...}``, written when the run started, so a
    run keeps its cell even if the spec's file changes) or else ``spec``."""
    if resolved:
        return Genotype.from_dict(resolved, name=resolved.get("name"))
    if spec is None:
        raise GenotypeError("the configuration names no genotype")
    return resolve_genotype(spec)
