"""The network skeleton's plan, without TensorFlow: channels and reductions
of every cell, where the auxiliary head sits, and parameter counts.

Every tfnas network (the evaluation network, the DARTS supernet, the ENAS
child) is one skeleton (:class:`tfnas.networks.CellNetwork`): a 3×3 conv
stem with ``STEM_MULTIPLIER·C`` channels, ``layers`` cells with reductions
at ``layers//3`` and ``2·layers//3`` (each doubling C), the auxiliary head
on the output of cell ``2·layers//3``, global average pooling and a linear
classifier.  :func:`cell_plan` is that plan; the networks build from it and
:func:`parameter_counts` counts the evaluation network's parameters from it
analytically (tested against built models).
"""

from __future__ import annotations

from dataclasses import dataclass

from tfnas.genotypes import Cell, Genotype
from tfnas.operations import operation_parameter_count
from tfnas.resolve import resolve_genotype

__all__ = ["STEM_MULTIPLIER", "STEMS", "CellSlot", "CellPlan", "reduction_indices", "cell_plan",
           "genotype_plan", "cell_parameter_count", "parameter_counts"]

STEM_MULTIPLIER = 3
# "cifar": 3x3 conv stride 1 (32x32 inputs).  "imagenet64": the same conv at
# stride 2 with symmetric padding 1, so 64x64 inputs reach the cells at 32x32
# and the rest of the network (reductions, 8x8 auxiliary input) is unchanged;
# same parameter count as "cifar".
STEMS = {"cifar": 1, "imagenet64": 2}


@dataclass(frozen=True)
class CellSlot:
    """One cell of the plan: its input channels (two back, one back), its
    node channels C, and whether it and the cell before it reduce."""

    index: int
    c_prev_prev: int
    c_prev: int
    channels: int
    reduction: bool
    reduction_prev: bool


@dataclass(frozen=True)
class CellPlan:
    cells: tuple            # CellSlot per cell
    stem_channels: int
    aux_index: int          # the auxiliary head reads this cell's output
    aux_channels: int       # ... which has these channels
    final_channels: int     # channels into the classifier


def reduction_indices(layers: int) -> tuple:
    """Positions of the two reduction cells."""
    return (layers // 3, 2 * layers // 3)


def cell_plan(init_channels: int, layers: int, multiplier) -> CellPlan:
    """The plan of a network of ``layers`` cells starting at C=``init_channels``;
    ``multiplier(reduction)`` is how many nodes a (normal or reduction) cell
    concatenates, its output having ``multiplier·C`` channels."""
    stem = STEM_MULTIPLIER * int(init_channels)
    c_pp, c_p, c = stem, stem, int(init_channels)
    slots, reduction_prev, aux_channels = [], False, None
    aux_index = 2 * layers // 3
    for i in range(int(layers)):
        reduction = i in reduction_indices(layers)
        if reduction:
            c *= 2
        slots.append(CellSlot(i, c_pp, c_p, c, reduction, reduction_prev))
        reduction_prev = reduction
        c_pp, c_p = c_p, int(multiplier(reduction)) * c
        if i == aux_index:
            aux_channels = c_p
    return CellPlan(tuple(slots), stem, aux_index, aux_channels, c_p)


def genotype_plan(genotype: Genotype, init_channels: int, layers: int) -> CellPlan:
    """The plan of the evaluation network of ``genotype``."""
    return cell_plan(init_channels, layers,
                     lambda reduction: len(genotype.reduce_concat if reduction else genotype.normal_concat))


def cell_parameter_count(cell: Cell, channels_prev_prev, channels_prev, channels, reduction,
                         reduction_prev, affine=True) -> int:
    """Trainable parameters of an evaluation cell (:class:`tfnas.cells.Cell`)."""
    bn = 2 * channels if affine else 0
    # FactorizedReduce (two C/2 1x1 convs) and the 1x1 ReLUConvBN have the same count.
    total = channels_prev_prev * channels + bn + channels_prev * channels + bn
    for op, index in cell.edges:
        stride = 2 if reduction and index < 2 else 1
        total += operation_parameter_count(op, channels, stride, affine)
    return total


def parameter_counts(genotype, init_channels=36, layers=20, num_classes=10) -> dict:
    """``{"params": without the auxiliary head, "params_auxiliary": the head
    alone}`` of the evaluation network of ``genotype`` (a Genotype or a
    spec), computed without building it."""
    genotype = resolve_genotype(genotype)
    plan = genotype_plan(genotype, init_channels, layers)
    total = 3 * 3 * 3 * plan.stem_channels + 2 * plan.stem_channels
    for slot in plan.cells:
        cell = genotype.cell("reduce" if slot.reduction else "normal")
        total += cell_parameter_count(cell, slot.c_prev_prev, slot.c_prev, slot.channels,
                                      slot.reduction, slot.reduction_prev)
    total += plan.final_channels * num_classes + num_classes
    aux = (plan.aux_channels * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * num_classes
           + num_classes)
    return {"params": int(total), "params_auxiliary": int(aux)}
