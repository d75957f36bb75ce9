"""``normlab compare``: the same LeNet with each normalization, several seeds.

Examples::

    normlab compare                               # 7 norms x 3 seeds x 3 epochs, 10k images
    normlab compare --norms batch,group,none --seeds 5 --epochs 5
    normlab compare --quick                       # the study's reduced budget
    normlab compare --dataset synthetic --train-subset 256 --epochs 1   # seconds

Prints a table (test accuracy and loss, mean ± std over seeds; seconds per epoch) and
the findings, writes figures and report.html into ``runs/compare-<time>/``; the
report's path is the last line.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare",
        help="LeNet with each normalization, several seeds: accuracy, loss, time",
        description=(
            "Train the tutorial's LeNet with every normalization (normlab's batch, layer, "
            "group, instance and RMS norm, torch.nn's batch norm as the reference, and none) "
            "for several seeds; print mean ± std of the test accuracy and loss and the "
            "seconds per epoch; write the figures and a report."
        ),
    )
    from normlab.cli._lab import add_common_flags, add_experiment_flags, experiments_of

    add_experiment_flags(parser, experiments_of("compare"))

    add_common_flags(parser)
    parser.set_defaults(func=run, trains=True)
    return parser


def run(args: argparse.Namespace) -> int:
    from normlab.cli._lab import experiments_of, run_and_print

    (experiment,) = experiments_of("compare")
    return run_and_print(experiment, args)
