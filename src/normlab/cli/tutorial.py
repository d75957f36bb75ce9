"""``normlab tutorial``: the batch-normalization tutorial end to end, with a report.

The main job (what ``make run`` runs): the covariate-shift figure; LeNet trained with the
tutorial's settings with normlab's batch norm, torch.nn's and none; per-epoch losses as
they go; a final table; the learned gamma/beta; and ``report.html`` + ``report.md`` in
the run directory ``runs/tutorial-<time>/``. The report's path is the last line printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from normlab.cli.train import config_changes, out_root, subset, validate_with_flags
from normlab.errors import UsageError


class _DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to a flag's help only where the help does not already say
    its default and the default is a value (not None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


DEFAULT_OUT = Path("runs")
# flag -> TutorialConfig field, for every flag that changes the numbers (not with --resume)
CONFIG_FLAGS = {
    "--dataset": "dataset",
    "--epochs": "epochs",
    "--seed": "seed",
    "--lr": "lr",
    "--momentum": "momentum",
    "--batch-size": "batch_size",
    "--norms": "norms",
    "--train-subset": "train_subset",
    "--test-subset": "test_subset",
    "--device": "device",
    "--compile": "compile",
    "--cuda-graphs": "cuda_graphs",
}


# TutorialConfig's defaults, for --help without importing torch (a test keeps them equal)
HELP_DEFAULTS = argparse.Namespace(
    dataset="fashion-mnist", epochs=5, seed=0, lr=0.03, momentum=0.9, batch_size=64,
    norms=("batch", "torch-batch", "none"), device="cpu",
)  # fmt: skip


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    defaults = HELP_DEFAULTS
    parser = subparsers.add_parser(
        "tutorial",
        help="the whole tutorial: covariate shift, LeNet with/without batch norm, report",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=_DefaultsOnce,
    )
    # The settings' defaults are None here (the flag was not given: --resume refuses given
    # ones); the help says the real default.
    parser.add_argument("--dataset", help=f"fashion-mnist or mnist (default: {defaults.dataset})")
    parser.add_argument("--data-dir", help="folder with the IDX files (default: discovered)")
    parser.add_argument("--epochs", type=int, help=f"epochs per arm (default: {defaults.epochs})")
    parser.add_argument(
        "--seed", type=int, help=f"weights and batch order (default: {defaults.seed})"
    )
    parser.add_argument("--lr", type=float, help=f"SGD learning rate (default: {defaults.lr})")
    parser.add_argument(
        "--momentum", type=float, help=f"SGD momentum (default: {defaults.momentum})"
    )
    parser.add_argument(
        "--batch-size", type=int, help=f"examples per step (default: {defaults.batch_size})"
    )
    parser.add_argument(
        "--norms",
        help=f"comma-separated arms, registry names (default: {','.join(defaults.norms)})",
    )
    parser.add_argument(
        "--train-subset",
        type=subset,
        help="use the first N training images, or 'all' (default: all)",
    )
    parser.add_argument(
        "--test-subset", type=subset, help="use the first N test images, or 'all' (default: all)"
    )
    parser.add_argument("--device", help=f"cpu, cuda, cuda:1, ... (default: {defaults.device})")
    parser.add_argument(
        "--compile", action="store_const", const=True, help="torch.compile the model"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_const", const=True,
        help="replay each training step from a CUDA graph (CUDA only): the host's cost per "
        "kernel launch disappears",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, help=f"root of run dirs (default: {DEFAULT_OUT}; not with --resume)"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted tutorial: its finished arms are kept, the others "
        "continue from their last checkpoints, and the report is written",
    )
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
    """The validated :class:`TutorialConfig` the flags describe (unset flags: defaults)."""
    from normlab.tutorial.pipeline import TutorialConfig

    changes = config_changes(args, CONFIG_FLAGS)
    if "norms" in changes:
        changes["norms"] = tuple(n.strip() for n in changes["norms"].split(",") if n.strip())
    config = dataclasses.replace(TutorialConfig(), **changes)
    validate_with_flags(config, CONFIG_FLAGS)
    _check_workers(args)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; pass --out with a folder you can write to")
    return config


def resumed_config(args: argparse.Namespace) -> tuple[Path, Any, str | None]:
    """``--resume``: the tutorial's run directory, its config, and where its data is."""
    from normlab.train.runs import Run
    from normlab.tutorial.pipeline import TutorialConfig

    given = [flag for flag, field in CONFIG_FLAGS.items() if getattr(args, field) is not None]
    given += ["--out"] if args.out is not None else []
    if given:
        raise UsageError(
            f"--resume continues the tutorial with its own settings in its own directory; "
            f"drop {', '.join(given)}"
        )
    _check_workers(args)
    the_run = Run.open(args.resume)
    if the_run.name != "tutorial":
        raise UsageError(
            f"{the_run.path} is a {the_run.name!r} run, not a tutorial's; resume it with "
            "the command that made it"
        )
    data_dir = args.data_dir if args.data_dir is not None else the_run.data_dir
    return the_run.path, TutorialConfig.from_dict(the_run.meta["config"]), data_dir


def resume_command(run_dir: Path) -> str:
    """The command that continues the tutorial in ``run_dir``."""
    return f"normlab tutorial --resume {shlex.quote(str(run_dir))}"


def _check_workers(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")


def print_epoch(norm: str, metrics: Any, *, epochs: int) -> None:
    """One line per finished epoch, labelled with the arm."""
    from normlab.train.engine import format_epoch
    from normlab.tutorial.pipeline import ARM_LABELS

    print(f"[{ARM_LABELS.get(norm, norm)}] {format_epoch(metrics, epochs)}", flush=True)


def run(args: argparse.Namespace) -> int:
    resuming = args.resume is not None
    if resuming:
        run_dir, config, data_dir = resumed_config(args)
    else:
        config, data_dir = config_from_args(args), args.data_dir
    from normlab.lab.experiments.shift import conclusion as shift_conclusion
    from normlab.lab.experiments.shift import summary_rows as shift_rows
    from normlab.lab.params import params_table
    from normlab.report.columns import SHIFT_COLUMNS, TUTORIAL_COLUMNS
    from normlab.report.tables import format_table
    from normlab.train.engine import load_data
    from normlab.train.runs import Run
    from normlab.tutorial.pipeline import (
        code_path,
        conclusions,
        run_tutorial,
        saved_arms,
        summary_rows,
    )
    from normlab.tutorial.report import build_report

    started = time.perf_counter()
    data = load_data(config.train_config(config.norms[0]), data_dir=data_dir)
    if not resuming:
        root = out_root(DEFAULT_OUT if args.out is None else args.out)
        run_dir = Run.create(root, "tutorial", config.to_dict(), data_dir=data_dir).path
    print(
        f"normlab tutorial: LeNet on {data.name} ({len(data.train_labels)} train, "
        f"{len(data.test_labels)} test images), arms: {', '.join(config.norms)}; "
        f"normlab code: {code_path(config.device)}\n"
        f"{'resuming in' if resuming else 'run directory:'} {run_dir}",
        flush=True,
    )
    for norm, history in saved_arms(config, run_dir).items() if resuming else ():
        for metrics in history.epochs:
            print_epoch(norm, metrics, epochs=config.epochs)

    try:
        result = run_tutorial(
            config,
            data,
            run_dir,
            progress=not args.no_progress,
            on_epoch=functools.partial(print_epoch, epochs=config.epochs),
            workers=args.workers,
        )
    except KeyboardInterrupt as interrupt:  # the arms' checkpoints on disk are whole
        interrupt.add_note(f"to continue: {resume_command(run_dir)}")
        raise

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
