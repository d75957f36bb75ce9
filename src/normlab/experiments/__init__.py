"""Experiments: each is a function that takes its settings and returns data (dataclasses
of numpy arrays and numbers). They draw nothing and write nothing; plots live in
:mod:`normlab.report.plots` and the commands in :mod:`normlab.commands` wire them.

- :mod:`normlab.experiments.shift`: the tutorial's covariate-shift demo, before and after
  standardisation, with a two-sample KS test.
"""
