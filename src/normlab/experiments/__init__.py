"""Experiments: each is a function that takes its settings and returns data (dataclasses
of numpy arrays and numbers). They draw nothing and write nothing; plots live in
:mod:`normlab.report.plots` and the commands in :mod:`normlab.commands` wire them.

- :mod:`normlab.experiments.shift`: the tutorial's covariate-shift demo, before and after
  standardisation, with a two-sample KS test.
- :mod:`normlab.experiments.tutorial`: the tutorial end to end (``normlab tutorial``).
- The lab (``normlab study``): :mod:`~normlab.experiments.compare`,
  :mod:`~normlab.experiments.sweeps` (learning rate, batch size),
  :mod:`~normlab.experiments.probes`, :mod:`~normlab.experiments.placement`,
  :mod:`~normlab.experiments.momentum`, orchestrated by :mod:`~normlab.experiments.study`
  over resumable cells (:mod:`~normlab.experiments.cells`), with findings from
  :mod:`~normlab.experiments.conclusions`.
"""
