"""Cells: keys, atomic storage, resume bookkeeping, config mismatch, bad files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from normlab.errors import UsageError
from normlab.lab.cells import (
    Cell,
    CellStore,
    estimate_seconds,
    format_value,
    run_cells,
    seed_list,
    to_jsonable,
)
from normlab.lab.experiment import CellTask


@dataclass(frozen=True)
class Config:
    width: int = 3
    names: tuple[str, ...] = ("a", "b")


def square(task: CellTask) -> dict:
    """A computation whose result depends on the cell, so a wrong mapping shows."""
    return {"value": task.cell.params["x"] ** 2 + task.cell.seed, "width": task.config.width}


def tasks(xs=(1.5, 2.0, 3.0), seeds=(0, 1), config=Config()) -> list[CellTask]:
    return [CellTask(Cell("demo", (("x", x),), s, cost=1.0), config) for x in xs for s in seeds]


def test_cell_keys_and_filenames_are_unique_and_safe() -> None:
    cell = Cell("sweep-lr", (("norm", "torch-batch"), ("lr", 0.03)), 1)
    assert cell.key == "sweep-lr/norm=torch-batch,lr=0.03/seed=1"
    assert cell.filename == "norm=torch-batch+lr=0.03+seed=1.json"
    assert cell.params == {"norm": "torch-batch", "lr": 0.03}
    odd = Cell("x", (("name", "a/b c"),), 0)
    assert "/" not in odd.filename and " " not in odd.filename
    assert format_value(1.0) == "1" and format_value(3e-05) == "3e-05"


def test_store_roundtrip_is_atomic_json(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    cell = Cell("demo", (("x", 2),), 0)
    assert store.load(cell, {"width": 3}) is None
    path = store.save(cell, {"width": 3}, {"value": float("nan"), "list": (1, 2)}, 0.5)
    assert path == tmp_path / "cells" / "demo" / cell.filename
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    loaded = store.load(cell, {"width": 3})
    assert loaded["list"] == [1, 2] and loaded["value"] != loaded["value"]  # NaN survives
    assert json.loads(path.read_text())["seconds"] == 0.5
    assert store.finished() == [path]


def test_store_refuses_other_config_and_broken_files(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    cell = Cell("demo", (("x", 2),), 0)
    store.save(cell, {"width": 3}, {"value": 4}, 0.1)
    with pytest.raises(UsageError, match="different demo config"):
        store.load(cell, {"width": 4})
    store.path(cell).write_text("{not json")
    with pytest.raises(UsageError, match="cannot read finished cell"):
        store.load(cell, {"width": 3})
    store.path(cell).write_text(json.dumps({"format": 1, "key": "other"}))
    with pytest.raises(UsageError, match="holds cell 'other'"):
        store.load(cell, {"width": 3})


def test_run_cells_computes_each_cell_once_and_skips_finished(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    calls: list[str] = []

    def counting(task: CellTask) -> dict:
        calls.append(task.cell.key)
        return square(task)

    all_tasks = tasks()
    first = run_cells(all_tasks[:2], counting, store=store, progress=False)
    assert calls == [t.cell.key for t in all_tasks[:2]]
    seen: list[tuple[str, bool]] = []
    results = run_cells(
        all_tasks,
        counting,
        store=store,
        progress=False,
        on_cell=lambda cell, result, computed: seen.append((cell.key, computed)),
    )
    assert calls == [t.cell.key for t in all_tasks]  # the first two were not recomputed
    assert [computed for _, computed in seen] == [False, False, True, True, True, True]
    assert list(results) == [t.cell.key for t in all_tasks]  # in task order
    for task in all_tasks:
        assert results[task.cell.key]["value"] == task.cell.params["x"] ** 2 + task.cell.seed
    assert first == {k: results[k] for k in first}


def test_run_cells_stops_on_callback_error_with_finished_cells_saved(tmp_path: Path) -> None:
    store = CellStore(tmp_path)

    def stop_after_three(cell: Cell, result: dict, computed: bool) -> None:
        if len(store.finished()) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cells(tasks(), square, store=store, progress=False, on_cell=stop_after_three)
    assert len(store.finished()) == 3


def test_run_cells_rejects_duplicates_and_bad_workers() -> None:
    with pytest.raises(UsageError, match="appears twice"):
        run_cells(tasks() + tasks()[:1], square, progress=False)
    with pytest.raises(UsageError, match="workers must be a positive integer"):
        run_cells(tasks(), square, progress=False, workers=0)


def test_helpers() -> None:
    assert seed_list(3) == (0, 1, 2)
    with pytest.raises(UsageError, match="seeds must be a positive integer"):
        seed_list(0)
    # steps * overhead + examples * per-example cost: more steps cost more time
    assert estimate_seconds(1024, 2) > estimate_seconds(1024, 128)
    assert estimate_seconds(1024, 64, "group") > estimate_seconds(1024, 64, "batch")
    assert to_jsonable({"a": (1, 2), "b": Config()}) == {
        "a": [1, 2],
        "b": {"width": 3, "names": ["a", "b"]},
    }
