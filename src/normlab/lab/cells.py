"""Cells: the unit of work of every lab experiment, checkpointed one by one.

A *cell* is one experiment x one setting x one seed, e.g. ``compare / norm=group /
seed 1``: one training run whose result is a small JSON-ready dict. An experiment is a
list of cells plus a function that turns their results into a summary, so the same
code runs one experiment from its command or all of them in ``normlab study``.

A :class:`CellStore` keeps each finished cell as one JSON file (written atomically:
temporary file, fsync, rename), so a study killed at any moment resumes by skipping
every cell whose file exists. A stored cell remembers the experiment config it was
computed under; resuming with a different config is an error, never a silent mix.

Each cell carries ``cost``, an estimate of its seconds on this kind of machine
(:func:`estimate_seconds`), so progress bars show a time-left estimate that corrects
itself with the measured rate as cells finish.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from normlab.errors import UsageError
from normlab.lab.workers import SignalGuard, run_in_workers

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from tqdm import tqdm

__all__ = [
    "Cell",
    "CellStore",
    "Task",
    "config_dict",
    "estimate_seconds",
    "format_value",
    "run_cells",
    "seed_list",
    "to_jsonable",
]

CELLS_DIR = "cells"  # under the run directory
CELL_FORMAT = 1  # bump when a cell file's layout changes

# Time model of one LeNet training step on one CPU thread: a fixed overhead per step plus
# a cost per example; the normalizations without running statistics over the batch cost
# somewhat more. Estimates for progress bars only (the run times: docs/results/lab.md).
STEP_OVERHEAD_S = 2.0e-3  # Python, optimizer and kernel launches per step
EXAMPLE_S = 6.0e-5  # forward + backward per 28x28 example
EVAL_EXAMPLE_S = 1.5e-5  # forward only, large batches
NORM_COST = {"group": 1.6, "instance": 1.5, "layer": 1.4, "rms": 1.7}  # vs batch/none
CELL_OVERHEAD_S = 0.3  # building the model and optimizer, bookkeeping


def estimate_seconds(examples: int, batch_size: int, norm: str = "batch") -> float:
    """Estimated seconds to train on ``examples`` examples in batches of ``batch_size``.

    Formula: ``CELL_OVERHEAD_S + factor(norm) * (steps * STEP_OVERHEAD_S + examples *
    EXAMPLE_S)`` with ``steps = ceil(examples / batch_size)``.
    """
    factor = NORM_COST.get(norm.removeprefix("torch-"), 1.0)
    steps = math.ceil(examples / max(batch_size, 1))
    return CELL_OVERHEAD_S + factor * (steps * STEP_OVERHEAD_S + examples * EXAMPLE_S)


def eval_seconds(examples: int) -> float:
    """Estimated seconds to evaluate ``examples`` examples."""
    return examples * EVAL_EXAMPLE_S


def seed_list(seeds: int) -> tuple[int, ...]:
    """The seeds ``0 .. seeds-1`` (each seed: its own initialisation and batch order)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"seeds must be a positive integer, got {seeds!r}")
    return tuple(range(seeds))


def format_value(value: object) -> str:
    """A setting's value as it appears in cell keys and file names: ``0.03``, ``batch``."""
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


@dataclass(frozen=True)
class Cell:
    """One experiment x one setting x one seed.

    Args:
        experiment: the experiment's name, e.g. ``"compare"``.
        setting: the values that define the setting, as ``(name, value)`` pairs in a
            fixed order, e.g. ``(("norm", "group"),)``. Values are str, int, float or None.
        seed: the training seed.
        cost: estimated seconds (see :func:`estimate_seconds`); for progress only.
    """

    experiment: str
    setting: tuple[tuple[str, Any], ...]
    seed: int
    cost: float = 1.0

    @property
    def params(self) -> dict[str, Any]:
        """The setting as a dict."""
        return dict(self.setting)

    @property
    def setting_key(self) -> str:
        """``"lr=0.3,norm=batch"``: the setting, without the seed."""
        return ",".join(f"{k}={format_value(v)}" for k, v in self.setting)

    @property
    def key(self) -> str:
        """``"sweep-lr/lr=0.3,norm=batch/seed=1"``: unique within a study."""
        return f"{self.experiment}/{self.setting_key}/seed={self.seed}"

    @property
    def filename(self) -> str:
        """The cell's file name inside ``cells/<experiment>/``: safe on every filesystem."""
        safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", self.setting_key.replace(",", "+"))
        return f"{safe}+seed={self.seed}.json"


def to_jsonable(value: object) -> Any:
    """``value`` with tuples as lists, numpy scalars/arrays as Python numbers/lists and
    dataclasses as dicts, so ``json.dumps`` accepts it (NaN and infinity are kept)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


class CellStore:
    """Finished cells as JSON files under ``<root>/cells/<experiment>/``.

    Args:
        root: the run directory (created if missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.dir = self.root / CELLS_DIR

    def path(self, cell: Cell) -> Path:
        return self.dir / cell.experiment / cell.filename

    def load(self, cell: Cell, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored result of ``cell``, or None if it has not finished.

        Raises:
            UsageError: the file is unreadable, or was computed under another config.
        """
        path = self.path(cell)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"cannot read finished cell {path}: {error}; delete it") from None
        if not isinstance(record, dict) or record.get("format") != CELL_FORMAT:
            raise UsageError(f"{path} is not a normlab cell file (format {CELL_FORMAT}); delete it")
        if record.get("key") != cell.key:
            raise UsageError(f"{path} holds cell {record.get('key')!r}, not {cell.key!r}")
        if record.get("config") != to_jsonable(config):
            raise UsageError(
                f"{path} was computed with a different {cell.experiment} config; "
                "resume with the run's own settings or start a new run"
            )
        return dict(record["result"])

    def save(
        self, cell: Cell, config: Mapping[str, Any], result: Mapping[str, Any], seconds: float
    ) -> Path:
        """Write the cell's result atomically; returns its path."""
        from normlab.train.atomic import write_text_atomic

        path = self.path(cell)
        record = {
            "format": CELL_FORMAT,
            "key": cell.key,
            "experiment": cell.experiment,
            "setting": to_jsonable(cell.params),
            "seed": cell.seed,
            "seconds": seconds,
            "config": to_jsonable(config),
            "result": to_jsonable(result),
        }
        return write_text_atomic(path, json.dumps(record, indent=1, allow_nan=True) + "\n")

    def finished(self) -> list[Path]:
        """Every finished cell file, sorted."""
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("*/*.json"))


class Task(Protocol):
    """What :func:`run_cells` reads of a task: its cell, and the frozen config dataclass
    it was planned with (kept in the cell's file). The lab's tasks are
    :class:`normlab.lab.experiment.CellTask`."""

    @property
    def cell(self) -> Cell: ...
    @property
    def config(self) -> DataclassInstance: ...


TaskT = TypeVar("TaskT", bound=Task)


def config_dict(config: DataclassInstance) -> dict[str, Any]:
    """A frozen config dataclass as a JSON-ready dict (tuples become lists)."""
    import dataclasses

    return to_jsonable(dataclasses.asdict(config))


def run_cells(
    tasks: Sequence[TaskT],
    compute: Callable[[TaskT], Mapping[str, Any]],
    *,
    store: CellStore | None = None,
    progress: bool = True,
    desc: str = "cells",
    on_cell: Callable[[Cell, Mapping[str, Any], bool], None] | None = None,
    workers: int = 1,
    worker_init: Callable[..., None] | None = None,
    worker_args: tuple[Any, ...] = (),
) -> dict[str, dict[str, Any]]:
    """Compute every task's cell with ``compute(task)``, skipping those in ``store``.

    Args:
        tasks: the cells to compute, in order.
        compute: a module-level function (workers import it by name).
        store: where finished cells are kept and looked up (None: keep nothing).
        progress: a tqdm bar over the estimated seconds, with the time left.
        desc: the bar's label.
        on_cell: called after each cell as ``on_cell(cell, result, computed)``;
            ``computed`` is False for a cell loaded from ``store``. An exception from it
            stops the run; every cell finished so far is already saved.
        workers: processes computing cells at once (1: in this process, in order).
            Every cell seeds itself, so results do not depend on ``workers``. How the
            workers end on Ctrl-C, SIGTERM or a worker's death: :mod:`normlab.lab.workers`
            (:class:`~normlab.lab.workers.WorkerDied` names the cell of a worker that died).
        worker_init, worker_args: run once in each worker process (e.g. thread count).

    Returns:
        ``{cell.key: result}`` for every task, in the order of ``tasks``.
    """
    from tqdm.auto import tqdm

    keys = [task.cell.key for task in tasks]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise UsageError(f"cell {duplicate!r} appears twice; settings must be distinct")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    results: dict[str, dict[str, Any]] = {}
    pending: list[TaskT] = []
    for task in tasks:
        stored = store.load(task.cell, config_dict(task.config)) if store is not None else None
        if stored is None:
            pending.append(task)
        else:
            results[task.cell.key] = stored
            if on_cell is not None:
                on_cell(task.cell, stored, False)
    total = sum(task.cell.cost for task in pending)
    bar = tqdm(
        total=round(total, 1),
        desc=desc,
        unit="s",
        disable=not progress or not pending,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} est. s [{elapsed}<{remaining}]{postfix}",
    )

    def finish(task: TaskT, result: Mapping[str, Any], seconds: float) -> None:
        result = dict(result)
        if store is not None:
            store.save(task.cell, config_dict(task.config), result, seconds)
        results[task.cell.key] = result
        bar.update(round(task.cell.cost, 1))
        if on_cell is not None:
            on_cell(task.cell, result, True)

    try:
        if workers == 1 or len(pending) <= 1:
            _run_here(pending, compute, finish, bar)
        else:
            bar.set_postfix_str(f"{len(pending)} cells, {workers} workers", refresh=True)
            run_in_workers(
                sorted(pending, key=lambda t: -t.cell.cost),  # the last to end: short ones
                compute,
                finish,
                workers=min(workers, len(pending)),
                label=lambda task: f"cell {task.cell.key}",
                init=worker_init,
                init_args=worker_args,
            )
    finally:
        bar.close()
    return {key: results[key] for key in keys}


def _run_here(
    pending: Sequence[TaskT],
    compute: Callable[[TaskT], Mapping[str, Any]],
    finish: Callable[[TaskT, Mapping[str, Any], float], None],
    bar: tqdm,
) -> None:
    """Compute ``pending`` in this process, in order; the first Ctrl-C or SIGTERM stops
    it, a second one cannot cut the clean-ups short (:class:`~normlab.lab.workers.SignalGuard`)."""
    with SignalGuard():
        for task in pending:
            bar.set_postfix_str(task.cell.key, refresh=True)
            started = time.perf_counter()
            result = compute(task)
            finish(task, result, time.perf_counter() - started)


def group_by_setting(
    cells: Iterable[Cell], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, list[tuple[Cell, Mapping[str, Any]]]]:
    """``{setting_key: [(cell, result), ...]}`` in first-seen order, seeds in order."""
    groups: dict[str, list[tuple[Cell, Mapping[str, Any]]]] = {}
    for cell in cells:
        groups.setdefault(cell.setting_key, []).append((cell, results[cell.key]))
    for members in groups.values():
        members.sort(key=lambda pair: pair[0].seed)
    return groups
