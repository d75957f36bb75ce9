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
    from normlab.cli._lab import add_common_flags

    parser = subparsers.add_parser(
        "probe",
        help="layer statistics and loss-landscape smoothness along training, with/without BN",
        description=(
            "Train LeNet with and without batch norm and probe it along the way: per-layer "
            "pre-activation statistics and sigmoid saturation (the 'internal covariate "
            "shift' picture) and Santurkar et al.'s smoothness measures."
        ),
    )
    parser.add_argument("--norms", metavar="A,B,...", help="norms to probe (default batch,none)")
    parser.add_argument("--probes", metavar="N", help="probe points over training (default 9)")
    parser.add_argument(
        "--probe-batch", metavar="N", help="training images every probe uses (default 256)"
    )
    parser.add_argument(
        "--step-sizes",
        metavar="A,B,...",
        help="steps along the gradient, in multiples of lr (default 0.5,1,2,4)",
    )
    parser.add_argument("--lr", metavar="LR", help="SGD learning rate (default 0.03)")
    add_common_flags(parser)
    parser.set_defaults(func=run, trains=True)
    return parser


def run(args: argparse.Namespace) -> int:
    from normlab.cli._lab import (
        build_config,
        parse_float,
        parse_float_list,
        parse_int,
        parse_list,
        quick_config,
        run_and_print,
    )

    config = build_config(
        quick_config("probe", args),
        args,
        {
            "norms": parse_list("--norms", args.norms),
            "probes": parse_int("--probes", args.probes, 2),
            "probe_batch": parse_int("--probe-batch", args.probe_batch, 2),
            "step_sizes": parse_float_list("--step-sizes", args.step_sizes),
            "lr": parse_float("--lr", args.lr),
        },
    )
    return run_and_print("probe", config, args)
