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
    parser.add_argument(
        "--norms",
        metavar="A,B,...",
        help="comma-separated registry names (default: batch,torch-batch,layer,group,"
        "instance,rms,none)",
    )
    parser.add_argument("--lr", metavar="LR", help="SGD learning rate (default 0.03)")
    parser.add_argument("--batch-size", metavar="N", help="examples per step (default 64)")
    parser.add_argument("--activation", help="sigmoid (default), relu, tanh, gelu")
    from normlab.cli._lab import add_common_flags

    add_common_flags(parser)
    parser.set_defaults(func=run, trains=True)
    return parser


def run(args: argparse.Namespace) -> int:
    from normlab.cli._lab import (
        build_config,
        parse_float,
        parse_int,
        parse_list,
        quick_config,
        run_and_print,
    )

    config = build_config(
        quick_config("compare", args),
        args,
        {
            "norms": parse_list("--norms", args.norms),
            "lr": parse_float("--lr", args.lr),
            "batch_size": parse_int("--batch-size", args.batch_size, 2),
            "activation": args.activation,
        },
    )
    return run_and_print("compare", config, args)
