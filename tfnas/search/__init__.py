"""DARTS search: supernet layers, the bilevel optimisation, derivation, the run loop.

- :mod:`tfnas.search.supernet`: ``MixedOp``, ``SearchCell``, ``SearchNetwork``
- :mod:`tfnas.search.darts`: ``DartsConfig``, ``BilevelSearch`` (first order,
  second order with finite-difference or exact hypergradient), ``ReferenceAdam``
- :mod:`tfnas.search.derive`: ``derive_genotype`` (the DARTS rule)
- :mod:`tfnas.search.loop`: ``SearchSettings``, ``PRESETS``, ``run_darts_search``

Submodules import TensorFlow; this package does not, so ``search.py`` can
split the CPU into logical devices first.
"""
