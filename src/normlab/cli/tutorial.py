"""``normlab tutorial``: the batch-normalization tutorial end to end, with a report.

The main job (what ``make run`` runs): the covariate-shift figure; LeNet trained with the
tutorial's settings with normlab's batch norm, torch.nn's and none; per-epoch losses as
they go; a final table; the learned gamma/beta; and ``report.html`` + ``report.md`` in
the run directory ``runs/tutorial-<time>/``. The report's path is the last line printed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

from normlab.errors import UsageError


class _DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to a flag's help only where the help does not already say
    its default and the default is a value (not None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tutorial",
        help="the whole tutorial: covariate shift, LeNet with/without batch norm, report",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=_DefaultsOnce,
    )
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist or mnist")
    parser.add_argument("--data-dir", help="folder with the IDX files (default: discovered)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per arm")
    parser.add_argument("--seed", type=int, default=0, help="weights and batch order")
    parser.add_argument("--lr", type=float, default=0.03, help="SGD learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per step")
    parser.add_argument(
        "--norms",
        default="batch,torch-batch,none",
        help="comma-separated arms (registry names)",
    )
    parser.add_argument(
        "--train-subset", type=int, help="use the first N training images (default: all)"
    )
    parser.add_argument(
        "--test-subset", type=int, help="use the first N test images (default: all)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="root of run dirs")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes training at once, one thread each, taking the arms' half-epoch "
        "pieces in turn (default: 2, or 1 on one core; 1: arm after arm, with progress bars)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run, trains=True)
    return parser


def config_from_args(args: argparse.Namespace) -> Any:
    """The validated :class:`TutorialConfig` the flags describe."""
    from normlab.tutorial.pipeline import TutorialConfig

    config = TutorialConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        seed=args.seed,
        device=args.device,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        compile=args.compile,
        norms=tuple(n.strip() for n in args.norms.split(",") if n.strip()),
    )
    config.validate()
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; pass a directory")
    return config


def print_epoch(norm: str, metrics: Any, *, epochs: int) -> None:
    """One line per finished epoch, labelled with the arm."""
    from normlab.train.engine import format_epoch
    from normlab.tutorial.pipeline import ARM_LABELS

    print(f"[{ARM_LABELS.get(norm, norm)}] {format_epoch(metrics, epochs)}", flush=True)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from normlab.lab.experiments.shift import conclusion as shift_conclusion
    from normlab.lab.experiments.shift import summary_rows as shift_rows
    from normlab.lab.params import params_table
    from normlab.report.columns import SHIFT_COLUMNS, TUTORIAL_COLUMNS
    from normlab.report.tables import format_table
    from normlab.train.engine import load_data
    from normlab.train.runs import Run
    from normlab.tutorial.pipeline import code_path, conclusions, run_tutorial, summary_rows
    from normlab.tutorial.report import build_report

    started = time.perf_counter()
    data = load_data(config.train_config(config.norms[0]), data_dir=args.data_dir)
    run_dir = Run.create(args.out, "tutorial", config.to_dict(), data_dir=args.data_dir).path
    print(
        f"normlab tutorial: LeNet on {data.name} ({len(data.train_labels)} train, "
        f"{len(data.test_labels)} test images), arms: {', '.join(config.norms)}; "
        f"normlab code: {code_path(config.device)}\n"
        f"run directory: {run_dir}",
        flush=True,
    )

    result = run_tutorial(
        config,
        data,
        run_dir,
        progress=not args.no_progress,
        on_epoch=functools.partial(print_epoch, epochs=config.epochs),
        workers=args.workers,
    )

    print()
    print(format_table(shift_rows(result.shift), SHIFT_COLUMNS, title="Covariate shift:"))
    print(shift_conclusion(result.shift))
    print()
    print(format_table(summary_rows(result), TUTORIAL_COLUMNS, title="After the last epoch:"))
    learned = [arm for arm in result.arms if arm.params]
    if learned:
        print(f"\nLearned gamma and beta, {learned[0].label}:")
        print(params_table(learned[0].params, "gamma"))
        print(params_table(learned[0].params, "beta"))
    print()
    for sentence in conclusions(result):
        print(f"- {sentence}")

    report = build_report(result, command=config.command())
    report.write_markdown(run_dir / "report.md")
    html = report.write_html(run_dir / "report.html")
    diverged = [arm.norm for arm in result.arms if arm.history.diverged]
    if diverged:
        print(f"warning: training diverged for {', '.join(diverged)}", file=sys.stderr)
    print(f"\nfinished in {time.perf_counter() - started:.1f} s; report:")
    print(html)
    return 0
