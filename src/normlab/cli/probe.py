"""``normlab probe``: what normalization does inside the network while it trains.

Examples::

    normlab probe                          # batch vs none, 2 seeds, 9 probes over 2 epochs
    normlab probe --norms batch,group,none --probes 15
    normlab probe --quick

At evenly spread steps it records, on a fixed batch of training images, each sigmoid
layer's pre-activation mean, std, percentiles and saturated fraction, and Santurkar et
al. (2018)'s loss-landscape measures (loss variation, gradient change, effective
beta-smoothness) when stepping along the gradient. Prints a table and the findings,
writes figures and report.html into ``runs/probe-<time>/``; the report's path is last.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from normlab.cli._lab import add_common_flags, add_experiment_flags, experiments_of

    parser = subparsers.add_parser(
        "probe",
        help="layer statistics and loss-landscape smoothness along training, with/without BN",
        description=(
            "Train LeNet with and without batch norm and probe it along the way: per-layer "
            "pre-activation statistics and sigmoid saturation (the 'internal covariate "
            "shift' picture) and Santurkar et al.'s smoothness measures."
        ),
    )
    add_experiment_flags(parser, experiments_of("probe"))
    add_common_flags(parser)
    parser.set_defaults(func=run, trains=True)
    return parser


def run(args: argparse.Namespace) -> int:
    from normlab.cli._lab import experiments_of, run_and_print

    (experiment,) = experiments_of("probe")
    return run_and_print(experiment, args)
