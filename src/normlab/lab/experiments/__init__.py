"""The lab's experiments, one module each: a subclass of
:class:`~normlab.lab.experiment.Experiment` and its one instance, listed in
:mod:`normlab.lab.plan`. :mod:`~normlab.lab.experiments.shift` is the tutorial's
covariate-shift demo (no training, no cells), used by ``normlab shift`` and the tutorial."""
