"""The plan: every lab experiment, in the order the study runs and reports them.

Adding an experiment is one new module under :mod:`normlab.lab.experiments` (a subclass
of :class:`~normlab.lab.experiment.Experiment` and one instance of it) and one line here.
The study, the report and the commands read this tuple and know no experiment by name.
"""

from __future__ import annotations

from normlab.errors import UsageError
from normlab.lab.experiment import Experiment
from normlab.lab.experiments.compare import COMPARE
from normlab.lab.experiments.depth import DEPTH
from normlab.lab.experiments.momentum import MOMENTUM
from normlab.lab.experiments.placement import PLACEMENT
from normlab.lab.experiments.probes import PROBE
from normlab.lab.experiments.small_batch import SMALL_BATCH
from normlab.lab.experiments.sweep_batch_size import BATCH_SIZE_SWEEP
from normlab.lab.experiments.sweep_lr import LR_SWEEP
from normlab.lab.experiments.train_eval import TRAIN_EVAL
from normlab.lab.experiments.transformer import TRANSFORMER

__all__ = ["EXPERIMENTS", "experiment_named", "names"]

EXPERIMENTS: tuple[Experiment, ...] = (
    COMPARE,
    LR_SWEEP,
    BATCH_SIZE_SWEEP,
    PROBE,
    PLACEMENT,
    MOMENTUM,
    TRANSFORMER,
    DEPTH,
    TRAIN_EVAL,
    SMALL_BATCH,
)


def names() -> tuple[str, ...]:
    """Every experiment's name, in the plan's order."""
    return tuple(e.name for e in EXPERIMENTS)


def experiment_named(name: str) -> Experiment:
    """The plan's experiment called ``name``.

    Raises:
        UsageError: no experiment has that name (the message lists the valid ones).
    """
    for experiment in EXPERIMENTS:
        if experiment.name == name:
            return experiment
    raise UsageError(f"unknown experiment {name!r}; valid: {', '.join(names())}")
