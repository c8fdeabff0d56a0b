"""The one table of cell operations: name, layer family, parameter count.

Every operation a genotype may name is a row of :data:`OPERATIONS`.  The
table is free of TensorFlow, so genotypes are validated and parameters
counted without importing it; :func:`tfnas.ops.make_operation` builds the
Keras layer of a row from its ``family`` (one factory per family there).
Adding an operation is one row here (and a factory in ``tfnas.ops`` when
its family is new).

Operation lists of the spaces, in the reference orders:

- :data:`DARTS_OPS`: the DARTS list (index j of an OPS variant maps to
  ``DARTS_OPS_NO_NONE[j]``);
- :data:`NASNET_EXTRA_OPS`: the two more that NASNet and AmoebaNet use;
- :data:`ENAS_OPS`: ENAS's micro space (its "identity" is ``skip_connect``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OperationSpec", "OPERATIONS", "DARTS_OPS", "DARTS_OPS_NO_NONE", "NASNET_EXTRA_OPS",
           "ENAS_OPS", "KNOWN_OPS", "FAMILIES", "GenotypeError", "UnknownOperationError", "operation_spec", "operation_parameter_count"]

FAMILIES = ("zero", "pool", "skip", "sep_conv", "dil_conv", "conv_7x1_1x7")


@dataclass(frozen=True)
class OperationSpec:
    """One operation: ``family`` picks the layer, ``kernel_size``,
    ``dilation`` and ``pool`` ("max"/"avg") configure it."""

    name: str
    family: str
    kernel_size: int = 0
    dilation: int = 1
    pool: str | None = None

    def parameter_count(self, channels: int, stride: int, affine: bool = True) -> int:
        """Trainable parameters of the layer at ``channels`` in and out
        (tested against the built layers)."""
        c = int(channels)
        bn = 2 * c if affine else 0
        k = self.kernel_size
        if self.family in ("zero", "pool"):
            return 0
        if self.family == "skip":   # FactorizedReduce at stride 2: two C/2 1x1 convs, BN
            return 0 if stride == 1 else c * c + bn
        if self.family == "sep_conv":
            return 2 * (k * k * c + c * c + bn)
        if self.family == "dil_conv":
            return k * k * c + c * c + bn
        return 2 * 7 * c * c + bn   # conv_7x1_1x7


OPERATIONS = {spec.name: spec for spec in (
    OperationSpec("none", "zero"),
    OperationSpec("max_pool_3x3", "pool", 3, pool="max"),
    OperationSpec("avg_pool_3x3", "pool", 3, pool="avg"),
    OperationSpec("skip_connect", "skip"),
    OperationSpec("sep_conv_3x3", "sep_conv", 3),
    OperationSpec("sep_conv_5x5", "sep_conv", 5),
    OperationSpec("sep_conv_7x7", "sep_conv", 7),
    OperationSpec("dil_conv_3x3", "dil_conv", 3, dilation=2),
    OperationSpec("dil_conv_5x5", "dil_conv", 5, dilation=2),
    OperationSpec("conv_7x1_1x7", "conv_7x1_1x7", 7),
)}
KNOWN_OPS = frozenset(OPERATIONS)

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
             "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
DARTS_OPS_NO_NONE = DARTS_OPS[1:]
NASNET_EXTRA_OPS = ("sep_conv_7x7", "conv_7x1_1x7")
ENAS_OPS = ("skip_connect", "sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3")


class GenotypeError(ValueError):
    """A genotype that cannot be parsed or is not a valid pair of cells
    (declared here, below :mod:`tfnas.genotypes`, so that an unknown
    operation is one too)."""


class UnknownOperationError(GenotypeError):
    """An operation name that is not in :data:`OPERATIONS`."""


def operation_spec(name: str) -> OperationSpec:
    """The row of ``name``; :class:`UnknownOperationError` names the known ones."""
    try:
        return OPERATIONS[name]
    except (KeyError, TypeError):
        raise UnknownOperationError(
            f"unknown operation {name!r}; known: {', '.join(sorted(OPERATIONS))}") from None


def operation_parameter_count(name: str, channels: int, stride: int, affine: bool = True) -> int:
    """Trainable parameters of operation ``name`` (see :meth:`OperationSpec.parameter_count`)."""
    return operation_spec(name).parameter_count(channels, stride, affine)
