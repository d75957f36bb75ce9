"""``normlab sweep lr|batch-size|placement|momentum``: one setting varied, several seeds.

Examples::

    normlab sweep lr                                # batch vs none, lr 0.01 ... 3
    normlab sweep lr --lrs 0.1,1,10 --norms batch,group,none
    normlab sweep batch-size                        # batch/group/layer, 2 ... 128 per batch
    normlab sweep batch-size --batch-sizes 2,8,32 --arms batch,group --lr-scaling constant
    normlab sweep placement                         # norm before/after sigmoid and ReLU
    normlab sweep momentum --momenta 0.01,0.1,0.5   # how far eval mode lags early on

Each prints a table and the findings (compared with the literature), writes figures
and report.html into ``runs/sweep-<what>-<time>/``; the report's path is the last line.
"""

from __future__ import annotations

import argparse
from typing import Any

WHAT = ("lr", "batch-size", "placement", "momentum")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from normlab.cli._lab import add_common_flags

    parser = subparsers.add_parser(
        "sweep",
        help="sweep the learning rate, batch size, norm placement or BN momentum",
        description=(
            "lr: with and without batch norm over a log grid of learning rates (final "
            "accuracy, divergence). batch-size: batch vs group vs layer norm from 2 to 128 "
            "images per batch at a fixed number of examples seen (eval mode vs batch "
            "statistics). placement: the norm before or after the activation. momentum: "
            "batch norm's running-statistics momentum and how far eval mode lags."
        ),
    )
    parser.add_argument("what", metavar="WHAT", help="lr, batch-size, placement or momentum")
    grid = parser.add_argument_group("what to sweep")
    grid.add_argument("--lrs", metavar="A,B,...", help="lr: learning rates (default 0.01..3)")
    grid.add_argument("--norms", metavar="A,B,...", help="lr: norms to sweep (default batch,none)")
    grid.add_argument(
        "--batch-sizes", metavar="A,B,...", help="batch-size: sizes (default 2,4,...,128)"
    )
    grid.add_argument(
        "--arms", metavar="A,B,...", help="batch-size: norms or arms (default batch,group,layer)"
    )
    grid.add_argument("--lr-scaling", help="batch-size: linear (default, lr x B / 32) or constant")
    grid.add_argument(
        "--activations", metavar="A,B,...", help="placement: activations (default sigmoid,relu)"
    )
    grid.add_argument(
        "--momenta", metavar="A,B,...", help="momentum: BN momenta (default 0.01,0.1,0.5)"
    )
    grid.add_argument("--lr", metavar="LR", help="the SGD learning rate (batch-size: at 32)")
    add_common_flags(parser)
    parser.set_defaults(func=run, trains=True)
    return parser


def run(args: argparse.Namespace) -> int:
    from normlab.cli._lab import (
        build_config,
        parse_float,
        parse_float_list,
        parse_int_list,
        parse_list,
        quick_config,
        run_and_print,
    )
    from normlab.errors import UsageError

    if args.what not in WHAT:
        raise UsageError(f"unknown sweep {args.what!r}; valid: {', '.join(WHAT)}")
    given = {
        "--lrs": args.lrs,
        "--norms": args.norms,
        "--batch-sizes": args.batch_sizes,
        "--arms": args.arms,
        "--lr-scaling": args.lr_scaling,
        "--activations": args.activations,
        "--momenta": args.momenta,
    }
    allowed = {
        "lr": {"--lrs", "--norms"},
        "batch-size": {"--batch-sizes", "--arms", "--lr-scaling"},
        "placement": {"--activations"},
        "momentum": {"--momenta"},
    }[args.what]
    wrong = [flag for flag, value in given.items() if value is not None and flag not in allowed]
    if wrong:
        raise UsageError(f"{wrong[0]} does not apply to `sweep {args.what}`; drop it")
    lr = parse_float("--lr", args.lr)
    if args.what == "lr":
        if lr is not None:
            raise UsageError("sweep lr takes its rates from --lrs, not --lr")
        name = "sweep-lr"
        specific = {
            "lrs": parse_float_list("--lrs", args.lrs),
            "norms": parse_list("--norms", args.norms),
        }
    elif args.what == "batch-size":
        name = "sweep-batch-size"
        specific = {
            "batch_sizes": parse_int_list("--batch-sizes", args.batch_sizes),
            "arms": parse_list("--arms", args.arms),
            "lr_scaling": args.lr_scaling,
            "lr": lr,
        }
    elif args.what == "placement":
        name = "placement"
        specific = {"activations": parse_list("--activations", args.activations), "lr": lr}
    else:
        name = "momentum"
        specific = {"momenta": parse_float_list("--momenta", args.momenta), "lr": lr}
    config = build_config(quick_config(name, args), args, specific)
    return run_and_print(name, config, args)
