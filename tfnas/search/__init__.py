"""Architecture search: one driver, one module per method.

- :mod:`tfnas.search.settings`: ``SearchSettings``, the method configs
  (``DartsConfig``, ...), presets, the ``METHODS`` registry (no TensorFlow)
- :mod:`tfnas.search.base`: ``SearchMethod``, the seam a method implements
- :mod:`tfnas.search.driver`: ``run_search``, the generic driver
- :mod:`tfnas.search.darts`: DARTS (``DartsSearch``, ``BilevelSearch``,
  ``ReferenceAdam``) on :mod:`tfnas.search.supernet` and
  :mod:`tfnas.search.derive`

Only ``settings`` is free of TensorFlow; this package's ``__init__`` imports
nothing, so ``search.py`` can split the CPU into logical devices first.
"""
