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


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from normlab.cli._lab import add_common_flags, add_experiment_flags, experiments_of

    sweeps = experiments_of("sweep")
    what = ", ".join(e.command[1] for e in sweeps)
    parser = subparsers.add_parser(
        "sweep",
        help=f"one setting varied, several seeds: {what}",
        description="; ".join(f"{e.command[1]}: {e.title.lower()}" for e in sweeps) + ".",
    )
    parser.add_argument("what", metavar="WHAT", help=what)
    add_experiment_flags(parser.add_argument_group("what to sweep"), sweeps)
    add_common_flags(parser)
    parser.set_defaults(func=run, trains=True)
    return parser


def run(args: argparse.Namespace) -> int:
    from normlab.cli._lab import experiments_of, run_and_print
    from normlab.errors import UsageError

    sweeps = {e.command[1]: e for e in experiments_of("sweep")}
    if args.what not in sweeps:
        raise UsageError(f"unknown sweep {args.what!r}; valid: {', '.join(sweeps)}")
    return run_and_print(sweeps[args.what], args, others=list(sweeps.values()))
