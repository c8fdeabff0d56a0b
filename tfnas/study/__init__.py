"""The study, end to end (``analyze.py study``): cells -> training -> probes
-> figures, rank correlations and a report.  Modules: ``design`` (which
cells, settings, the manifest), ``probing``, ``jobs``, ``executors``
(sequential, process pool, Ray), ``stats``, ``results``, ``figures``,
``hparams``, ``report``, ``run`` (:func:`tfnas.study.run.run_study`)."""
