"""``normlab study``: every lab experiment into one run directory with one report.

The study is a *plan* (one config per experiment, :func:`default_plan`) turned into
cells (:mod:`normlab.lab.cells`): one experiment x one setting x one seed each,
run in order under one progress bar with a time-left estimate. Every finished cell is
saved atomically under ``<run>/cells/``, so an interrupted study resumes
(:func:`run_study` with ``resume=``) without redoing a finished cell. At the end every
experiment is summarised, the findings are generated from the numbers
(:mod:`normlab.lab.conclusions`), and the run directory receives::

    config.json      the plan (every experiment's config) and the machine
    cells/           one JSON file per finished cell
    results.json     every summary, the findings, the timings
    figures/*.png    every figure
    report.html      one self-contained page (figures embedded)
    report.md        the same in Markdown (figures linked from figures/)

Budgets, measured on the project's 2-core machine: the default plan takes well under
20 minutes, ``quick`` under 2 (see docs/parts/lab.md for the numbers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normlab.errors import UsageError
from normlab.lab.cells import Cell, CellStore, CellTask, config_dict, run_cells
from normlab.lab.common import Experiment, cut, lab_data
from normlab.lab.experiments.compare import COMPARE, CompareConfig
from normlab.lab.experiments.momentum import MOMENTUM, MomentumConfig
from normlab.lab.experiments.placement import PLACEMENT, PlacementConfig
from normlab.lab.experiments.probes import PROBE, ProbeConfig
from normlab.lab.experiments.sweeps import (
    BATCH_SIZE_SWEEP,
    LR_SWEEP,
    BatchSizeSweepConfig,
    LrSweepConfig,
)

__all__ = [
    "EXPERIMENTS",
    "StudyResult",
    "default_plan",
    "estimate_plan_seconds",
    "plan_from_dict",
    "plan_to_dict",
    "run_single",
    "run_study",
    "torch_threads",
]

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (COMPARE, LR_SWEEP, BATCH_SIZE_SWEEP, PROBE, PLACEMENT, MOMENTUM)
}
RESULTS_FILE = "results.json"


def default_workers() -> int:
    """Processes for the cells: one per core, at most 2 (each runs one torch thread)."""
    return max(1, min(2, os.cpu_count() or 1))


FIGURES_DIR = "figures"


def default_plan(
    *,
    quick: bool = False,
    seeds: int | None = None,
    dataset: str = "fashion-mnist",
    device: str = "cpu",
    experiments: tuple[str, ...] | None = None,
    syncbn: bool = False,
) -> dict[str, Any]:
    """The study's config for each experiment.

    Args:
        quick: the reduced budget (< 2 minutes): 2 000 training images, 1 epoch, fewer
            grid points. Default: 10 000 images (8 192 for the batch-size sweep), 1-3
            epochs, 2-3 seeds (< 20 minutes).
        seeds: override the number of seeds of every experiment.
        dataset: ``fashion-mnist`` (default) or ``mnist``.
        experiments: a subset of :data:`EXPERIMENTS` (default: all, in order).
        syncbn: add the ``syncbn`` and ``localbn`` arms (2 processes each, from
            :mod:`normlab.lab.syncbn_arm`) to the batch-size sweep.
    """
    common: dict[str, Any] = {"dataset": dataset, "device": device}
    if quick:
        small = {**common, "train_subset": 2_000, "test_subset": 500}
        plan = {
            "compare": CompareConfig(**small, seeds=2, epochs=1),
            "sweep-lr": LrSweepConfig(**small, lrs=(0.03, 0.3, 1.0, 3.0), seeds=2, epochs=1),
            "sweep-batch-size": BatchSizeSweepConfig(
                **{**small, "train_subset": 1_024},
                batch_sizes=(2, 8, 32, 128),
                arms=("batch", "group"),
                seeds=2,
            ),
            "probe": ProbeConfig(**small, seeds=2, epochs=1, probes=5),
            "placement": PlacementConfig(**small, seeds=2, epochs=1),
            "momentum": MomentumConfig(**small, seeds=2, evaluations=6),
        }
    else:
        plan = {
            "compare": CompareConfig(**common),
            "sweep-lr": LrSweepConfig(**common),
            "sweep-batch-size": BatchSizeSweepConfig(**common),
            "probe": ProbeConfig(**common),
            "placement": PlacementConfig(**common),
            "momentum": MomentumConfig(**common),
        }
    if seeds is not None:
        plan = {name: dataclasses.replace(c, seeds=seeds) for name, c in plan.items()}
    if syncbn:
        sweep = plan["sweep-batch-size"]
        plan["sweep-batch-size"] = dataclasses.replace(
            sweep, arms=(*sweep.arms, "syncbn", "localbn")
        )
    if experiments is not None:
        unknown = [e for e in experiments if e not in EXPERIMENTS]
        if unknown:
            raise UsageError(f"unknown experiment {unknown[0]!r}; valid: {', '.join(EXPERIMENTS)}")
        plan = {name: plan[name] for name in EXPERIMENTS if name in experiments}
    for config in plan.values():
        config.validate()
    return plan


def plan_to_dict(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The plan as JSON-ready dicts (what config.json stores)."""
    return {name: config_dict(config) for name, config in plan.items()}


def config_from_dict(config_type: type, values: Mapping[str, Any]) -> Any:
    """Rebuild a frozen experiment config from :func:`plan_to_dict`'s dict (lists become
    the tuples the config declares); unknown keys are an error."""
    hints = typing.get_type_hints(config_type)
    names = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UsageError(f"unknown {config_type.__name__} key(s): {', '.join(unknown)}")
    kwargs = {}
    for key, value in values.items():
        is_tuple = "tuple" in str(hints.get(key, ""))
        kwargs[key] = tuple(value) if is_tuple and isinstance(value, list) else value
    return config_type(**kwargs)


def plan_from_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`plan_to_dict`."""
    plan = {}
    for name, config in values.items():
        if name not in EXPERIMENTS:
            raise UsageError(f"unknown experiment {name!r} in the study's plan")
        plan[name] = config_from_dict(EXPERIMENTS[name].config_type, config)
    return plan


def estimate_plan_seconds(plan: Mapping[str, Any]) -> float:
    """The estimated seconds of every cell of the plan (the progress bar's total)."""
    return sum(c.cost for name, config in plan.items() for c in EXPERIMENTS[name].cells(config))


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
    summaries: dict[str, dict[str, Any]]  # experiment -> summary
    findings: list[Any]  # conclusions.Finding
    report_html: Path
    report_md: Path
    seconds: float  # wall time of this invocation
    cells_computed: int  # cells run by this invocation
    cells_loaded: int  # cells found finished in the run directory


def run_study(
    plan: Mapping[str, Any] | None = None,
    *,
    out: str | os.PathLike[str] = "runs",
    resume: str | os.PathLike[str] | None = None,
    data: Any | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    threads: int | None = 1,
    workers: int = 1,
    on_cell: Callable[[Cell, Mapping[str, Any], bool], None] | None = None,
    name: str = "study",
    title: str = "normlab study: why, where and when to normalize",
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
        run = Run.create(
            out,
            name,
            {"plan": plan_to_dict(plan)},
            data_dir=data_dir,
            checkpoint_every=0,
            extra={"threads": threads, "workers": workers},
        )
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
        )
    seconds = time.perf_counter() - started
    from normlab.lab.report import write_study_outputs

    findings, html, md = write_study_outputs(
        run.path,
        summaries,
        title=title,
        timing={
            "wall_seconds": seconds,
            "cells": counts["computed"] + counts["loaded"],
            "workers": workers,
            "load_average": _load_average(),
            "cells_computed": counts["computed"],
            "cells_loaded": counts["loaded"],
            "threads": threads,
        },
    )
    return StudyResult(
        run.path, summaries, findings, html, md, seconds, counts["computed"], counts["loaded"]
    )


_DATA_CACHE: dict = {}  # full datasets loaded by this process, by (name, data_dir)


def compute_cell(task: CellTask) -> dict[str, Any]:
    """Compute one cell (in this process or a worker): its experiment's ``run_cell`` on
    the task's data, or on ``config.dataset`` loaded once per process."""
    config = task.config
    if task.data is not None:
        data = cut(task.data, config)
    else:
        data = lab_data(config, data_dir=task.data_dir, cache=_DATA_CACHE)
    return dict(EXPERIMENTS[task.cell.experiment].run_cell(config, data, task.cell))


def _init_worker(threads: int | None, arms: Mapping[str, Any]) -> None:
    """A worker's set-up: its torch threads, the caching CPU allocator and the batch-size
    sweep's registered arms."""
    import torch

    from normlab import kernels
    from normlab.lab.experiments.sweeps import BATCH_SIZE_ARMS

    kernels.cache_cpu_memory()
    if threads is not None:
        torch.set_num_threads(threads)
    BATCH_SIZE_ARMS.update(arms)


def run_plan_cells(
    plan: Mapping[str, Any],
    *,
    store: CellStore | None = None,
    data: Any | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    workers: int = 1,
    threads: int | None = 1,
    on_cell: Callable[[Cell, Mapping[str, Any], bool], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Compute (or load from ``store``) every cell of ``plan``; each experiment's summary."""
    from normlab.lab.experiments.sweeps import BATCH_SIZE_ARMS

    tasks: list[CellTask] = []
    cells_of: dict[str, list[Cell]] = {}
    for experiment_name, config in plan.items():
        if experiment_name not in EXPERIMENTS:
            raise UsageError(
                f"unknown experiment {experiment_name!r}; valid: {', '.join(EXPERIMENTS)}"
            )
        config.validate()
        cells = EXPERIMENTS[experiment_name].cells(config)
        cells_of[experiment_name] = cells
        tasks.extend(CellTask(cell, config, data, data_dir) for cell in cells)

    with torch_threads(threads):
        results = run_cells(
            tasks,
            compute_cell,
            store=store,
            progress=progress,
            desc="study" if len(plan) > 1 else next(iter(plan), "cells"),
            on_cell=on_cell,
            workers=workers,
            worker_init=_init_worker,
            worker_args=(threads, dict(BATCH_SIZE_ARMS)),
        )
    summaries = {}
    for experiment_name, config in plan.items():
        cells = cells_of[experiment_name]
        summary = EXPERIMENTS[experiment_name].summarize(
            config, cells, {c.key: results[c.key] for c in cells}
        )
        summary["experiment"] = experiment_name
        summary["config"] = config_dict(config)
        summary["cells"] = len(cells)
        if store is not None:
            summary["cell_seconds"] = _cell_seconds(store, cells)
        summaries[experiment_name] = summary
    return summaries


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
    config: Any,
    *,
    out: str | os.PathLike[str] = "runs",
    data: Any | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    threads: int | None = 1,
    workers: int = 1,
) -> StudyResult:
    """One experiment into its own run directory with its own small report (what the
    ``compare``, ``sweep`` and ``probe`` commands run)."""
    if name not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    title = f"normlab {name.replace('-', ' ')}: {EXPERIMENTS[name].title.lower()}"
    return run_study(
        {name: config},
        out=out,
        data=data,
        data_dir=data_dir,
        progress=progress,
        threads=threads,
        workers=workers,
        name=name,
        title=title,
    )


def load_results(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """results.json of a finished study."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise UsageError(f"{path} does not exist; the study has not finished")
    return json.loads(path.read_text(encoding="utf-8"))
