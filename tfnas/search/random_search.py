"""Random search with weight sharing (Li & Talwalkar, 2019) on the seam.

The same shared child, loop and derivation as ENAS
(:class:`tfnas.search.enas.SharedChildSearch`), with every architecture
drawn uniformly (:class:`tfnas.search.enas_controller.UniformSampler`) and
no controller: the baseline every NAS comparison needs (on ENAS's space,
random architectures re-train about as well as ENAS's).  The genotype of an
epoch is the best of ``derive_samples`` uniform samples on validation
batches.
"""

from __future__ import annotations

from tfnas.search.enas import SharedChildSearch
from tfnas.search.enas_controller import UniformSampler

__all__ = ["RandomSearch"]


class RandomSearch(SharedChildSearch):
    def __init__(self, settings, info, strategy):
        super().__init__(settings, info, strategy)
        self.sampler = UniformSampler(self.space, seed=settings.seed)


METHOD = RandomSearch
