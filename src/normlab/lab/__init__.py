"""The laboratory: experiments that show why, where and when normalization helps.

- :mod:`~normlab.lab.experiment`: the contract, one :class:`~normlab.lab.experiment.Experiment`
  subclass per experiment module;
- :mod:`normlab.lab.experiments`: the experiments, one module and one object each;
- :mod:`~normlab.lab.plan`: the ordered tuple of experiment objects (adding an experiment is
  one new module plus one line there);
- :mod:`~normlab.lab.cells` (resumable units of work) and :mod:`~normlab.lab.study` (the
  runner: :func:`~normlab.lab.study.run_experiment`, :func:`~normlab.lab.study.run_study`);
- :mod:`~normlab.lab.report` (one document for every experiment), with the shared pieces
  of findings (:mod:`~normlab.lab.verdicts`) and figures (:mod:`~normlab.lab.figures`).
"""
