"""``normlab shift``: the tutorial's covariate-shift demo, before and after standardisation.

Draws a train feature from N(train mean, train std²) and a test feature from N(test mean,
test std²), standardises each by its own statistics, prints the means, stds and the
two-sample KS test before and after, and saves ``shift.png``; the PNG's path is the last
line printed.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from normlab.errors import UsageError

DEFAULT_OUT = Path("runs") / "shift"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "shift",
        help="covariate-shift demo: train vs test histograms before/after standardisation",
        description=__doc__.split("\n\n")[1].replace("``", "") if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=1000, help="values per sample (>= 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--train-mean", type=float, default=0.0, help="mean of the train feature")
    parser.add_argument("--train-std", type=float, default=1.0, help="std of the train feature")
    parser.add_argument("--test-mean", type=float, default=2.0, help="mean of the test feature")
    parser.add_argument("--test-std", type=float, default=1.5, help="std of the test feature")
    parser.add_argument(
        "--test-shape",
        choices=("normal", "skewed"),
        default="normal",
        help="distribution of the test feature; 'skewed' (a shifted exponential with the same "
        "mean and std) shows what standardisation cannot remove",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="directory for shift.png (created)"
    )
    parser.set_defaults(func=run)
    return parser


def _validate(args: argparse.Namespace) -> None:
    from normlab.lab.experiments.shift import MAX_SAMPLES

    if not 2 <= args.samples <= MAX_SAMPLES:
        raise UsageError(f"--samples must be between 2 and {MAX_SAMPLES} (got {args.samples})")
    for flag in ("train_mean", "test_mean"):
        if not math.isfinite(getattr(args, flag)):
            raise UsageError(f"--{flag.replace('_', '-')} must be a finite number")
    for flag in ("train_std", "test_std"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value > 0):
            name = f"--{flag.replace('_', '-')}"
            raise UsageError(f"{name} must be a standard deviation > 0 (got {value})")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; pass a directory")


def run(args: argparse.Namespace) -> int:
    _validate(args)
    from normlab.lab.experiments.shift import conclusion, covariate_shift, summary_rows
    from normlab.report.columns import SHIFT_COLUMNS
    from normlab.report.plots import save_png, shift_figure
    from normlab.report.tables import format_table

    result = covariate_shift(
        num_samples=args.samples,
        train=(args.train_mean, args.train_std),
        test=(args.test_mean, args.test_std),
        seed=args.seed,
        test_shape=args.test_shape,
    )
    path = save_png(shift_figure(result), args.out / "shift.png")
    test = "N" if args.test_shape == "normal" else "skewed"
    title = (
        f"Covariate shift: {args.samples} train values from N({args.train_mean:g}, "
        f"{args.train_std:g}²), {args.samples} test values from {test}({args.test_mean:g}, "
        f"{args.test_std:g}²), seed {args.seed}"
    )
    print(format_table(summary_rows(result), SHIFT_COLUMNS, title=title))
    print()
    print(conclusion(result))
    print(path)
    return 0
