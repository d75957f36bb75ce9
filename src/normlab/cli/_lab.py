"""What the lab's commands (compare, sweep, probe, study) share: flags, value parsing
with one-line errors, and running one experiment into a run directory with a report.

The commands know no experiment by name: each experiment of the plan
(:data:`normlab.lab.plan.EXPERIMENTS`) says which command runs it
(:attr:`~normlab.lab.experiment.Experiment.command`) and which flags set its config
(:attr:`~normlab.lab.experiment.Experiment.options`).

Values are parsed here rather than by argparse ``type=`` so that a bad value is one
line (``normlab sweep: error: --lrs must be positive numbers, got 'x'``) and exit code 2,
like every other user error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normlab.errors import UsageError

if TYPE_CHECKING:
    from normlab.lab.experiment import ConfigT, Experiment, ExperimentConfig, ExperimentResult
    from normlab.lab.verdicts import Finding

# flag -> config field, for the flags every lab experiment has
COMMON_FIELDS = {
    "seeds": "seeds",
    "epochs": "epochs",
    "dataset": "dataset",
    "train_subset": "train_subset",
    "test_subset": "test_subset",
    "device": "device",
}


def add_common_flags(parser: argparse.ArgumentParser, *, epochs: bool = True) -> None:
    """Budget, data and output flags; every value defaults to the experiment's config."""
    budget = parser.add_argument_group("budget (defaults: the study's budget)")
    budget.add_argument("--seeds", metavar="N", help="runs per setting (seeds 0..N-1)")
    if epochs:
        budget.add_argument("--epochs", metavar="N", help="passes over the training subset")
    budget.add_argument(
        "--train-subset", metavar="N", help="first N training images, or 'all' (60 000)"
    )
    budget.add_argument("--test-subset", metavar="N", help="first N test images, or 'all'")
    budget.add_argument(
        "--quick", action="store_true", help="the reduced budget of `normlab study --quick`"
    )
    data = parser.add_argument_group("data and output")
    data.add_argument("--dataset", help="fashion-mnist (default), mnist, or synthetic")
    data.add_argument("--data-dir", metavar="DIR", help="where the dataset files are")
    data.add_argument("--device", help="cpu (default), cuda, cuda:N or mps")
    data.add_argument(
        "--out", metavar="DIR", help="parent of the run directory (default runs; not with --resume)"
    )
    data.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run in RUN_DIR with its own settings (finished cells kept)",
    )
    data.add_argument(
        "--workers", metavar="N", help="processes computing cells at once (default: 2 cores)"
    )
    data.add_argument("--threads", metavar="N", help="torch threads per process (default 1)")
    data.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_int(flag: str, text: str | None, minimum: int = 1) -> int | None:
    """``int(text)`` >= ``minimum``, or None when the flag was not given."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag} must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise UsageError(f"{flag} must be an integer >= {minimum}, got {value}")
    return value


def parse_float(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{flag} must be a number, got {text!r}") from None


def parse_subset(flag: str, text: str | None) -> int | str | None:
    """A positive count, ``"all"`` (None in the config), or ``"unset"`` when not given."""
    if text is None:
        return "unset"
    if text.strip().lower() == "all":
        return None
    return parse_int(flag, text, 2)


def parse_list(flag: str, text: str | None) -> tuple[str, ...] | None:
    """``"a,b, c"`` -> ``("a", "b", "c")``; None when not given."""
    if text is None:
        return None
    items = tuple(part.strip() for part in text.split(","))
    if not any(items):
        raise UsageError(f"{flag} needs a comma-separated list, got {text!r}")
    if not all(items):
        raise UsageError(f"{flag} has an empty item in {text!r}; write e.g. {flag} 0.1,0.2")
    return items


def parse_float_list(flag: str, text: str | None) -> tuple[float, ...] | None:
    items = parse_list(flag, text)
    if items is None:
        return None
    values = []
    for item in items:
        try:
            values.append(float(item))
        except ValueError:
            raise UsageError(f"{flag} must be numbers separated by commas, got {item!r}") from None
    return tuple(values)


def parse_int_list(flag: str, text: str | None) -> tuple[int, ...] | None:
    items = parse_list(flag, text)
    if items is None:
        return None
    values = []
    for item in items:
        try:
            values.append(int(item))
        except ValueError:
            raise UsageError(f"{flag} must be integers separated by commas, got {item!r}") from None
    return tuple(values)


def build_config(
    base: ConfigT, args: argparse.Namespace, specific: dict[str, Any] | None = None
) -> ConfigT:
    """``base`` (a frozen experiment config) with the common flags and ``specific``
    changes applied (None values are left at ``base``'s), validated."""
    changes: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(base)}
    if getattr(args, "seeds", None) is not None:
        changes["seeds"] = parse_int("--seeds", args.seeds)
    if getattr(args, "epochs", None) is not None and "epochs" in names:
        changes["epochs"] = parse_int("--epochs", args.epochs)
    for flag, field in (("--train-subset", "train_subset"), ("--test-subset", "test_subset")):
        value = parse_subset(flag, getattr(args, field, None))
        if value != "unset":
            changes[field] = value
    for field in ("dataset", "device"):
        if getattr(args, field, None) is not None:
            changes[field] = getattr(args, field)
    for key, value in (specific or {}).items():
        if value is not None:
            changes[key] = value
    config = dataclasses.replace(base, **changes)
    config.validate()
    return config


PARSERS: dict[str, Callable[[str, str | None], object]] = {
    "int": lambda flag, text: parse_int(flag, text),
    "int>=2": lambda flag, text: parse_int(flag, text, 2),
    "float": parse_float,
    "str": lambda flag, text: text,
    "list": parse_list,
    "float-list": parse_float_list,
    "int-list": parse_int_list,
}


def experiments_of(command: str) -> list[Experiment]:
    """The plan's experiments that ``normlab <command>`` runs, in the plan's order."""
    from normlab.lab.plan import EXPERIMENTS

    return [e for e in EXPERIMENTS if e.command[0] == command]


def add_experiment_flags(
    parser: argparse._ActionsContainer, experiments: Sequence[Experiment]
) -> None:
    """Every flag of ``experiments`` (a flag several share is added once, with the first
    one's help)."""
    seen: set[str] = set()
    for experiment in experiments:
        for option in experiment.options:
            if option.flag not in seen:
                seen.add(option.flag)
                parser.add_argument(
                    option.flag, dest=_dest(option.flag), metavar=option.metavar, help=option.help
                )


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def experiment_changes(
    experiment: Experiment, args: argparse.Namespace, others: Sequence[Experiment] = ()
) -> dict[str, Any]:
    """The config changes the flags ask for, parsed with one-line errors.

    A flag of another experiment of the same command (``others``) is refused: with the
    experiment's own reason (:attr:`~normlab.lab.experiment.Experiment.refused`) or as
    one that does not apply.
    """
    own = {option.flag for option in experiment.options}
    refused = dict(experiment.refused)
    words = " ".join(experiment.command)
    for flag in dict.fromkeys(o.flag for other in others for o in other.options):
        if flag not in own and getattr(args, _dest(flag), None) is not None:
            raise UsageError(refused.get(flag, f"{flag} does not apply to `{words}`; drop it"))
    return {
        option.field: PARSERS[option.parse](option.flag, getattr(args, _dest(option.flag)))
        for option in experiment.options
    }


def quick_config(experiment: Experiment, args: argparse.Namespace) -> ExperimentConfig:
    """The experiment's config in the study's plan (``--quick``: the reduced one)."""
    from normlab.lab.study import default_plan

    dataset = args.dataset or "fashion-mnist"
    name = experiment.name
    return default_plan(quick=args.quick, dataset=dataset, experiments=(name,))[name]


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """workers, threads and progress from the flags."""
    from normlab.lab.study import default_workers

    workers = parse_int("--workers", args.workers)
    threads = parse_int("--threads", args.threads)
    return {
        "workers": default_workers() if workers is None else workers,
        "threads": 1 if threads is None else threads,
        "progress": not args.no_progress,
    }


def run_and_print(
    experiment: Experiment, args: argparse.Namespace, others: Sequence[Experiment] = ()
) -> int:
    """Build the experiment's config from the flags (or continue ``--resume``'s run), run
    it into ``--out``, print its table and findings, then the report's path (last line)."""
    from normlab.lab.study import run_single

    run = Resumable(" ".join(experiment.command))
    if args.resume is not None:
        refuse_with_resume(given_flags(args, experiment, others), args.out, args.resume, "the run")
        print(f"normlab {experiment.name}: resuming {args.resume}", flush=True)
        with run.interruptible():
            result = run_single(
                experiment.name,
                resume=args.resume,
                data_dir=args.data_dir,
                on_start=run.started,
                **run_options(args),
            )
    else:
        config = build_config(
            quick_config(experiment, args), args, experiment_changes(experiment, args, others)
        )
        print(f"normlab {experiment.name}: {_cells_line(experiment, config)}", flush=True)
        with run.interruptible():
            result = run_single(
                experiment.name,
                config,
                out=args.out or "runs",
                data_dir=args.data_dir,
                on_start=run.started,
                **run_options(args),
            )
    print_summary(result.summaries, result.findings)
    print(f"run directory: {result.run_dir}")
    print(result.report_html)
    return 0


class Resumable:
    """A lab command's run directory, known once the run starts, and the command that
    continues it when the run is cut short.

    Args:
        command: the command's words after ``normlab``, e.g. ``"sweep lr"``.
    """

    def __init__(self, command: str) -> None:
        self.command = command
        self.run_dir: Path | None = None

    def started(self, run_dir: Path) -> None:
        """The run's directory exists (``on_start`` of :func:`~normlab.lab.study.run_study`)."""
        self.run_dir = run_dir
        print(f"run directory: {run_dir}", flush=True)

    def resume_command(self) -> str:
        return f"normlab {self.command} --resume {shlex.quote(str(self.run_dir))}"

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Ctrl-C, SIGTERM or a worker's death inside the block: the way to continue is
        added to what the command prints (every finished cell is already saved)."""
        from normlab.lab.workers import WorkerDied

        try:
            yield
        except KeyboardInterrupt as interrupt:
            ignore_later_signals()  # the command is ending: a second Ctrl-C changes nothing
            if self.run_dir is not None:
                interrupt.add_note("finished cells are kept")
                interrupt.add_note(f"to continue: {self.resume_command()}")
            raise
        except WorkerDied as error:
            if self.run_dir is None:
                raise
            raise WorkerDied(
                f"{error}; finished cells are kept; to continue: {self.resume_command()}"
            ) from None


def ignore_later_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on (in the main thread; the process is ending, so
    that its exit code and last line stay those of the first signal)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def given_flags(
    args: argparse.Namespace, experiment: Experiment, others: Sequence[Experiment] = ()
) -> list[str]:
    """The flags given that change the numbers."""
    flags = ["--quick", "--seeds", "--epochs", "--train-subset", "--test-subset"]
    flags += ["--dataset", "--device"]
    flags += [o.flag for e in (experiment, *others) for o in e.options]
    return [flag for flag in dict.fromkeys(flags) if getattr(args, _dest(flag), None)]


def refuse_with_resume(given: Sequence[str], out: str | None, resume: str, what: str) -> None:
    """One line naming the flags ``--resume`` does not take: those that change the numbers,
    and ``--out`` unless it is where the run already is.

    Args:
        given: the number-changing flags given (:func:`given_flags`).
        out: ``--out``, or None when not given.
        resume: ``--resume``'s run directory.
        what: what is resumed, in the message: ``"a study"``, ``"the run"``.
    """
    if given:
        raise UsageError(
            f"--resume continues {what} with its own settings; drop {', '.join(given)}"
        )
    run_dir = Path(resume)
    if out is not None and run_dir.is_dir() and Path(out).resolve() != run_dir.resolve().parent:
        raise UsageError(f"--resume continues the run in its own directory {resume}; drop --out")


def _cells_line(experiment: Experiment, config: ExperimentConfig) -> str:
    from normlab.lab.study import estimate_plan_seconds
    from normlab.report.stats import format_duration

    cells = experiment.cells(config)
    seconds = estimate_plan_seconds({experiment.name: config})
    return f"{len(cells)} runs, about {format_duration(seconds)} of training on one idle core"


def print_summary(results: Mapping[str, ExperimentResult], findings: Sequence[Finding]) -> None:
    """Each experiment's terminal table, then every finding."""
    from normlab.lab.plan import experiment_named
    from normlab.report import format_table

    for name, result in results.items():
        experiment = experiment_named(name)
        table = experiment.table(result.summary)
        print()
        print(format_table(table.rows, table.columns, title=f"{experiment.title} ({name})"))
    if findings:
        print()
        print("Findings:")
        for finding in findings:
            print(f"- {finding.sentence()}")
    print()
