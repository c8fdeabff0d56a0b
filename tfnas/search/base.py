"""The search-method seam: what a search algorithm implements.

A search method (DARTS, ENAS, random search with weight sharing) is one
class, in its own module, that subclasses :class:`SearchMethod`.  The
generic driver (:mod:`tfnas.search.driver`) does the rest: the run
directory, data, epochs, checkpoints and resume, metrics, TensorBoard, the
genotype files of every epoch with their width and depth, progress.  In the
style of keras-tuner's Oracle/Tuner and NASLib's optimizer/trainer split,
the method holds the algorithm and its state; the driver holds the loop.

A method

- builds its networks and optimizers in ``__init__`` (called inside the
  distribution strategy's scope) from the :class:`SearchSettings`;
- says which data it reads (:attr:`SearchMethod.data_splits`): two halves
  of the training split (DARTS) or the training split and a validation
  split carved from it (ENAS);
- opens its batch streams once (:meth:`open_streams`), runs one epoch
  (:meth:`run_epoch`), derives the current genotype (:meth:`derive`);
- lists what a checkpoint must hold (:meth:`trackables`);
- may add record entries (:meth:`epoch_extras`), TensorBoard summaries
  (:meth:`write_summaries`) and sizes for ``--dry-run`` (:meth:`sizes`).
"""

from __future__ import annotations

import abc
import importlib

from tfnas.data import BatchStream, distribute
from tfnas.search.settings import SearchSettings, method_info

__all__ = ["SearchMethod", "SearchData", "method_class"]


class SearchData:
    """The data a method reads: ``stream(split, ...)`` opens a
    :class:`~tfnas.data.BatchStream` over the remaining epochs (one
    long-lived iterator per pipeline), distributed for the strategy."""

    def __init__(self, data, settings: SearchSettings, strategy, epochs: range):
        self.data, self.settings, self.strategy, self.epochs = data, settings, strategy, epochs
        self.info = data.info

    def batches_per_epoch(self, split: str, batch_size: int | None = None,
                          drop_remainder: bool = True) -> int:
        return self.data.batches_per_epoch(split, batch_size or self.settings.batch_size,
                                           drop_remainder=drop_remainder)

    def stream(self, split: str, batches: int, *, seed_offset: int = 0, batch_size: int | None = None,
               augment: bool = True, fixed_epoch: int | None = None,
               drop_remainder: bool | None = None, passes_per_epoch: int = 1) -> BatchStream:
        """``batches`` per pass of ``split`` (shuffled; augmented unless told
        not).  By default one pass per remaining epoch, each epoch's order and
        augmentation a function of the seed and the epoch (so resumed runs
        see the same batches), all batches full; ``fixed_epoch`` instead
        repeats that one epoch's order forever, keeping its last partial batch
        (fixed evaluation batches).  ``passes_per_epoch`` > 1 gives each search
        epoch that many passes, each a fresh order of ``split``."""
        settings = self.settings
        if drop_remainder is None:
            drop_remainder = fixed_epoch is None
        common = dict(seed=settings.seed + seed_offset, shuffle=True, batches_per_epoch=batches,
                      augment=augment, drop_remainder=drop_remainder)
        if fixed_epoch is None:
            r = int(passes_per_epoch)
            epochs = range(self.epochs.start * r, self.epochs.stop * r)
            ds = self.data.dataset(split, batch_size or settings.batch_size, epochs=epochs, **common)
        else:
            ds = self.data.dataset(split, batch_size or settings.batch_size, epoch=fixed_epoch,
                                   **common).repeat()
        return BatchStream(distribute(ds, self.strategy), batches)


class SearchMethod(abc.ABC):
    """One search algorithm (see the module docstring)."""

    #: the split the shared weights train on and the split the architecture
    #: is judged on: ("train_a", "train_b") = the two halves of train;
    #: ("train", "validation") = train without a validation split carved from it
    data_splits = ("train_a", "train_b")
    #: the validation split's size when the settings give none (a fraction of train)
    default_validation = 0.0

    def __init__(self, settings: SearchSettings, info, strategy):
        self.settings, self.info, self.strategy = settings, info, strategy
        self.config = settings.config
        self.space = settings.cell_space

    @classmethod
    def validation_size(cls, settings: SearchSettings) -> float:
        """How much of train to carve as the validation split (0: none)."""
        if "validation" not in cls.data_splits:
            return 0
        return settings.validation or cls.default_validation

    @abc.abstractmethod
    def trackables(self) -> dict:
        """Everything a checkpoint must hold to resume the search exactly."""

    @abc.abstractmethod
    def open_streams(self, data: SearchData) -> None:
        """Open the batch streams of the remaining epochs (once per run)."""

    @abc.abstractmethod
    def run_epoch(self, epoch: int, progress) -> dict:
        """Search for one epoch (0-based); return its metrics (numbers)."""

    @abc.abstractmethod
    def derive(self):
        """The genotype the search holds now (:class:`tfnas.genotypes.Genotype`)."""

    def describe(self) -> str:
        """One line said when the run starts (method, form, sizes)."""
        return f"{type(self).__name__}"

    def epoch_line(self, record: dict) -> str:
        """The method's part of the per-epoch log line."""
        return ""

    def epoch_extras(self) -> dict:
        """Entries of the epoch's record besides the metrics (JSON-ready)."""
        return {}

    def write_summaries(self, record: dict, step: int) -> None:
        """TensorBoard summaries of the epoch (called inside the run's writer)."""

    def sizes(self) -> dict:
        """Sizes of the method's networks for ``--dry-run``."""
        return {}


def method_class(name: str) -> type:
    """The :class:`SearchMethod` of a method name (its module's ``METHOD``)."""
    return importlib.import_module(method_info(name).module).METHOD
