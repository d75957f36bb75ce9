"""``normlab study``: every lab experiment into one run directory with one report.

The study is a *plan* (one config per experiment of :data:`normlab.lab.plan.EXPERIMENTS`,
:func:`default_plan`) turned into
cells (:mod:`normlab.lab.cells`): one experiment x one setting x one seed each,
run in order under one progress bar with a time-left estimate. Every finished cell is
saved atomically under ``<run>/cells/``, so an interrupted study resumes
(:func:`run_study` with ``resume=``) without redoing a finished cell. At the end every
experiment is summarised, the findings are generated from the numbers (each
experiment's :meth:`~normlab.lab.experiment.Experiment.findings`), and the run directory
receives::

    config.json      the plan (every experiment's config) and the machine
    cells/           one JSON file per finished cell
    results.json     every summary, the findings, the timings
    figures/*.png    every figure
    report.html      one self-contained page (figures embedded)
    report.md        the same in Markdown (figures linked from figures/)

Interrupted (Ctrl-C, SIGTERM) or with a worker that died, the study stops with every
finished cell saved and every worker process ended (:mod:`normlab.lab.workers`). The
budgets of the default and ``quick`` plans, as measured: docs/results/lab.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normlab.errors import UsageError
from normlab.lab.cells import Cell, CellStore, config_dict, run_cells
from normlab.lab.common import cut, lab_data
from normlab.lab.experiment import CellTask, Experiment, ExperimentConfig, ExperimentResult
from normlab.lab.plan import EXPERIMENTS, experiment_named, names
from normlab.lab.ranks import Share, shared_run, wait_for_cells
from normlab.lab.report import RESULTS_FILE, StudyTiming, write_study_outputs
from normlab.lab.serialize import from_jsonable
from normlab.lab.verdicts import Finding

if TYPE_CHECKING:
    from normlab.data import Dataset

__all__ = [
    "StudyResult",
    "default_plan",
    "estimate_plan_seconds",
    "load_results",
    "plan_from_dict",
    "plan_to_dict",
    "run_experiment",
    "run_single",
    "run_study",
    "torch_threads",
]

Plan = Mapping[str, ExperimentConfig]  # experiment name -> its config, in the plan's order


def default_workers(ranks_here: int = 1) -> int:
    """Processes for the cells: one per core, at most 2 (each runs one torch thread); with
    ``ranks_here`` ranks on this machine, its cores shared among them."""
    return max(1, min(2, (os.cpu_count() or 1) // max(1, ranks_here)))


FIGURES_DIR = "figures"


def default_plan(
    *,
    quick: bool = False,
    seeds: int | None = None,
    dataset: str = "fashion-mnist",
    device: str = "cpu",
    experiments: tuple[str, ...] | None = None,
    syncbn: bool = False,
) -> dict[str, ExperimentConfig]:
    """The study's config for each experiment (each experiment's
    :meth:`~normlab.lab.experiment.Experiment.study_config`), in the plan's order.

    Args:
        quick: the reduced budget: 2 000 training images, 1 epoch, fewer grid points.
            Default: 10 000 images (8 192 for the batch-size sweep), 1-3 epochs, 2-3
            seeds. Their run times: docs/results/lab.md.
        seeds: override the number of seeds of every experiment.
        dataset: ``fashion-mnist`` (default) or ``mnist``.
        experiments: names of a subset of the plan (default: all, in order).
        syncbn: add the multi-process arms where an experiment has them (the
            ``syncbn`` and ``localbn`` arms of the batch-size sweep).
    """
    if experiments is not None:
        for name in experiments:
            experiment_named(name)
    plan = {
        e.name: e.study_config(quick=quick, dataset=dataset, device=device, syncbn=syncbn)
        for e in EXPERIMENTS
        if experiments is None or e.name in experiments
    }
    if seeds is not None:
        plan = {name: dataclasses.replace(c, seeds=seeds) for name, c in plan.items()}
    for config in plan.values():
        config.validate()
    return plan


def plan_to_dict(plan: Plan) -> dict[str, dict[str, Any]]:
    """The plan as JSON-ready dicts (what config.json stores)."""
    return {name: config_dict(config) for name, config in plan.items()}


def plan_from_dict(values: Mapping[str, Any]) -> dict[str, ExperimentConfig]:
    """The inverse of :func:`plan_to_dict`."""
    plan = {}
    for name, config in values.items():
        if name not in names():
            raise UsageError(f"unknown experiment {name!r} in the study's plan")
        plan[name] = from_jsonable(experiment_named(name).config_type, config)
    return plan


def estimate_plan_seconds(plan: Plan) -> float:
    """The estimated seconds of every cell of the plan (the progress bar's total)."""
    return sum(
        c.cost for name, config in plan.items() for c in experiment_named(name).cells(config)
    )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: leave it).

    LeNet's small tensors gain little from a second thread, and on a loaded machine
    threads that spin-wait for each other make every step many times slower.
    """
    import torch

    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UsageError(f"threads must be a positive integer, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class StudyResult:
    """What :func:`run_study` produced."""

    run_dir: Path
    summaries: dict[str, ExperimentResult]  # experiment name -> its result
    findings: list[Finding]
    report_html: Path | None  # None on a rank other than 0 (see ``share``)
    report_md: Path | None
    seconds: float  # wall time of this invocation
    cells_computed: int  # cells run by this invocation
    cells_loaded: int  # cells found finished in the run directory


def run_study(
    plan: Plan | None = None,
    *,
    out: str | os.PathLike[str] = "runs",
    resume: str | os.PathLike[str] | None = None,
    data: Dataset | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    threads: int | None = 1,
    workers: int = 1,
    on_cell: Callable[[Cell, Mapping[str, Any], bool], None] | None = None,
    name: str = "study",
    title: str = "normlab study: why, where and when to normalize",
    on_start: Callable[[Path], None] | None = None,
    share: Share | None = None,
) -> StudyResult:
    """Run every experiment of ``plan`` into one run directory and write the report.

    Args:
        plan: experiment name -> config (default: :func:`default_plan`). Not allowed
            with ``resume``: a resumed study runs its own plan.
        out: parent of the new run directory (``<out>/study-<timestamp>``).
        resume: a study's run directory: finished cells are loaded, the rest computed.
        data: a :class:`~normlab.data.Dataset` to use for every experiment instead of
            loading each config's ``dataset`` (tests pass synthetic data).
        data_dir: where to look for the dataset.
        progress: one progress bar over all cells, with the time left.
        threads: torch threads per process while training (default 1; None: torch's
            default).
        workers: processes computing cells at once (each with ``threads`` threads).
        on_cell: called after each cell (see :func:`~normlab.lab.cells.run_cells`);
            an exception from it stops the study, with every finished cell saved.
        name: the run directory's prefix (``<out>/<name>-<timestamp>``).
        title: the report's title.
        on_start: called with the run directory once it exists, before any cell runs
            (so that an interrupted caller can say where to resume).
        share: this process's share when several processes (torchrun's ranks) run the
            study together (:mod:`normlab.lab.ranks`; default: every cell here). Rank 0
            waits for the others' cells and writes the report; another rank returns once
            its own cells are saved, with no summaries and no report.
    """
    from normlab.train.runs import Run

    started = time.perf_counter()
    if resume is not None:
        if plan is not None:
            raise UsageError("a resumed study runs its own plan; do not pass a plan with resume")
        run = Run.open(resume)
        stored = run.meta.get("config", {})
        if run.meta.get("kind") != "custom" or "plan" not in stored:
            raise UsageError(f"{run.path} is not a normlab study run (no plan in config.json)")
        plan = plan_from_dict(stored["plan"])
        data_dir = data_dir or run.data_dir
    else:
        plan = dict(plan) if plan is not None else default_plan()
        if not plan:
            raise UsageError("the study's plan is empty; give at least one experiment")
        for config in plan.values():
            config.validate()

        def create(run_name: str) -> Run:
            return Run.create(
                out,
                run_name,
                {"plan": plan_to_dict(plan)},
                data_dir=data_dir,
                checkpoint_every=0,
                extra={"threads": threads, "workers": workers},
            )

        if share is None or share.world_size == 1:
            run = create(name)
        else:
            run = shared_run(out, name, share, create)
            if run.meta["config"].get("plan") != plan_to_dict(plan):
                raise UsageError(
                    f"{run.path} holds another plan than this rank's; "
                    "give every rank the same settings"
                )
    if on_start is not None:
        on_start(run.path)
    counts = {"computed": 0, "loaded": 0}

    def count(cell: Cell, result: Mapping[str, Any], computed: bool) -> None:
        counts["computed" if computed else "loaded"] += 1
        if on_cell is not None:
            on_cell(cell, result, computed)

    with run.logging_to_file():
        summaries = run_plan_cells(
            plan,
            store=CellStore(run.path),
            data=data,
            data_dir=data_dir,
            progress=progress,
            workers=workers,
            threads=threads,
            on_cell=count,
            share=share,
        )
    seconds = time.perf_counter() - started
    if share is not None and share.rank != 0:
        return StudyResult(run.path, {}, [], None, None, seconds, counts["computed"], 0)
    findings, html, md = write_study_outputs(
        run.path,
        summaries,
        title=title,
        timing=StudyTiming(
            wall_seconds=seconds,
            cells=counts["computed"] + counts["loaded"],
            workers=workers,
            load_average=_load_average(),
            cells_computed=counts["computed"],
            cells_loaded=counts["loaded"],
            threads=threads,
        ),
    )
    return StudyResult(
        run.path, summaries, findings, html, md, seconds, counts["computed"], counts["loaded"]
    )


_DATA_CACHE: dict[tuple[str, str | None], Dataset] = {}  # full datasets, by (name, data_dir)


def compute_cell(task: CellTask) -> dict[str, Any]:
    """Compute one cell (in this process or a worker): its experiment's ``run_cell`` on
    the task's data, or on ``config.dataset`` loaded once per process."""
    config = task.config
    if task.data is not None:
        data = cut(task.data, config)
    else:
        data = lab_data(config, data_dir=task.data_dir, cache=_DATA_CACHE)
    return dict(task.experiment.run_cell(config, data, task.cell))


def _init_worker(threads: int | None, states: Sequence[tuple[Experiment, Any]]) -> None:
    """A worker's set-up: its torch threads, the caching CPU allocator and each
    experiment's process-wide state (e.g. registered arms)."""
    import torch

    from normlab import kernels

    kernels.cache_cpu_memory()
    if threads is not None:
        torch.set_num_threads(threads)
    for experiment, state in states:
        experiment.set_worker_state(state)


def run_plan_cells(
    plan: Plan,
    *,
    store: CellStore | None = None,
    data: Dataset | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    workers: int = 1,
    threads: int | None = 1,
    on_cell: Callable[[Cell, Mapping[str, Any], bool], None] | None = None,
    experiments: Mapping[str, Experiment] | None = None,
    share: Share | None = None,
) -> dict[str, ExperimentResult]:
    """Compute (or load from ``store``) every cell of ``plan``; each experiment's result.

    ``experiments`` names the experiment objects (default: the plan's,
    :func:`~normlab.lab.plan.experiment_named`). With ``share`` of several ranks, only
    this rank's cells are computed; rank 0 then waits for every other cell in ``store``
    (the others get ``{}``).
    """
    chosen = {name: (experiments or {}).get(name) or experiment_named(name) for name in plan}
    tasks: list[CellTask] = []
    cells_of: dict[str, list[Cell]] = {}
    for name, config in plan.items():
        config.validate()
        cells = chosen[name].cells(config)
        cells_of[name] = cells
        tasks.extend(CellTask(cell, config, data, data_dir, chosen[name]) for cell in cells)

    states = [(e, e.worker_state()) for e in chosen.values()]
    several = share is not None and share.world_size > 1
    if several and store is None:
        raise UsageError("several ranks share a study through its cell files; give a store")
    with torch_threads(threads):
        results = run_cells(
            share.mine(tasks) if share is not None else tasks,
            compute_cell,
            store=store,
            progress=progress,
            desc="study" if len(plan) > 1 else next(iter(plan), "cells"),
            on_cell=on_cell,
            workers=workers,
            worker_init=_init_worker,
            worker_args=(threads, states),
        )
    if share is not None and share.world_size > 1:
        if share.rank != 0 or store is None:
            return {}
        results = _others_cells(store, tasks, results, progress, on_cell)
    out: dict[str, ExperimentResult] = {}
    for name, config in plan.items():
        cells = cells_of[name]
        out[name] = ExperimentResult(
            experiment=name,
            config=config,
            cells=len(cells),
            summary=chosen[name].summarize(config, cells, {c.key: results[c.key] for c in cells}),
            cell_seconds=None if store is None else _cell_seconds(store, cells),
        )
    return out


def _others_cells(
    store: CellStore,
    tasks: Sequence[CellTask],
    mine: Mapping[str, dict[str, Any]],
    progress: bool,
    on_cell: Callable[[Cell, Mapping[str, Any], bool], None] | None,
) -> dict[str, dict[str, Any]]:
    """Rank 0's view once its own cells are done: wait for the other ranks' cell files,
    then every result (``on_cell`` sees the others' as loaded)."""
    wait_for_cells(store, tasks, progress=progress)

    def loaded(cell: Cell, result: Mapping[str, Any], computed: bool) -> None:
        if on_cell is not None and cell.key not in mine:
            on_cell(cell, result, False)

    return run_cells(tasks, compute_cell, store=store, progress=False, on_cell=loaded)


def run_experiment(
    experiment: Experiment,
    config: ExperimentConfig | None = None,
    data: Dataset | None = None,
    *,
    store: CellStore | None = None,
    progress: bool = True,
    data_dir: str | None = None,
    workers: int = 1,
    threads: int | None = 1,
) -> ExperimentResult:
    """Run every cell of one experiment (skipping those in ``store``) and summarise.

    Args:
        experiment: e.g. :data:`normlab.lab.experiments.compare.COMPARE`.
        config: its config (default: the study's full-budget config on Fashion-MNIST).
        data: a :class:`normlab.data.Dataset` to use instead of loading
            ``config.dataset``; it is cut to ``config``'s subsets.
        store: keeps finished cells (and finds them when resuming).
        data_dir: where to look for the dataset (default: the usual discovery).
        workers: processes computing cells at once.
        threads: torch threads per process (None: torch's default).

    Example::

        >>> result = run_experiment(COMPARE, CompareConfig(seeds=2, epochs=1))
        >>> result.summary.norms["batch"].final_test_accuracy.mean   # doctest: +SKIP
    """
    if config is None:
        config = experiment.study_config(
            quick=False, dataset="fashion-mnist", device="cpu", syncbn=False
        )
    config.validate()
    results = run_plan_cells(
        {experiment.name: config},
        store=store,
        data=data,
        data_dir=data_dir,
        progress=progress,
        workers=workers,
        threads=threads,
        experiments={experiment.name: experiment},
    )
    return results[experiment.name]


def _load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cell_seconds(store: CellStore, cells: list[Cell]) -> float:
    """The measured seconds of the cells (from their files; across resumes)."""
    total = 0.0
    for cell in cells:
        path = store.path(cell)
        if path.is_file():
            total += float(json.loads(path.read_text(encoding="utf-8")).get("seconds", 0.0))
    return total


def run_single(
    name: str,
    config: ExperimentConfig | None = None,
    *,
    out: str | os.PathLike[str] = "runs",
    resume: str | os.PathLike[str] | None = None,
    data: Dataset | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    threads: int | None = 1,
    workers: int = 1,
    on_start: Callable[[Path], None] | None = None,
) -> StudyResult:
    """One experiment into its own run directory with its own small report (what the
    ``compare``, ``sweep`` and ``probe`` commands run); ``resume``: continue such a run
    (``config`` must then be None: the run keeps its own)."""
    experiment = experiment_named(name)
    title = f"normlab {name.replace('-', ' ')}: {experiment.title.lower()}"
    if resume is not None:
        if config is not None:
            raise UsageError("a resumed run keeps its own config; do not pass one with resume")
        from normlab.train.runs import Run

        found = Run.open(resume).name
        if found != name:
            raise UsageError(f"{resume} is a {found!r} run, not a {name!r} one")
    elif config is None:
        raise UsageError(f"give {name}'s config, or resume= a {name} run directory")
    return run_study(
        None if resume is not None else {name: config},
        out=out,
        resume=resume,
        data=data,
        data_dir=data_dir,
        progress=progress,
        threads=threads,
        workers=workers,
        name=name,
        title=title,
        on_start=on_start,
    )


def load_results(run_dir: str | os.PathLike[str]) -> dict[str, ExperimentResult]:
    """Every experiment's result in results.json of a finished study, typed again."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise UsageError(f"{path} does not exist; the study has not finished")
    stored = json.loads(path.read_text(encoding="utf-8"))["summaries"]
    results = {}
    for name, values in stored.items():
        experiment = experiment_named(name)
        results[name] = ExperimentResult(
            experiment=name,
            config=from_jsonable(experiment.config_type, values["config"]),
            cells=int(values["cells"]),
            summary=from_jsonable(experiment.summary_type, values["summary"]),
            cell_seconds=values.get("cell_seconds"),
        )
    return results
