"""What the experiments' tests share: a run killed after its first cells, then resumed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from normlab.data import Dataset
from normlab.lab.cells import CellStore
from normlab.lab.experiment import ExperimentResult
from normlab.lab.study import run_plan_cells


class Killed(Exception):
    """Stands for a process killed in the middle of a run."""


@dataclass
class KilledAndResumed:
    """The cells finished before the kill, and the resumed run: each of its cells with
    whether it was computed (not read back), and its result."""

    before_kill: list[str]
    resumed_cells: list[tuple[str, bool]]
    resumed: ExperimentResult

    @property
    def recomputed(self) -> list[str]:
        return [key for key, computed in self.resumed_cells if computed]

    @property
    def read_back(self) -> list[str]:
        return [key for key, computed in self.resumed_cells if not computed]


KillAndResume = Callable[[str, object, Dataset, int], KilledAndResumed]


@pytest.fixture
def kill_and_resume(tmp_path: Path) -> KillAndResume:
    """``kill_and_resume(name, config, data, after)``: run experiment ``name`` until
    ``after`` cells are finished, stop it there as a kill would, then run it again on the
    same cell files."""

    def run(name: str, config: object, data: Dataset, after: int) -> KilledAndResumed:
        store, before_kill = CellStore(tmp_path / "cells"), []

        def stop(cell, result, computed) -> None:  # type: ignore[no-untyped-def]
            before_kill.append(cell.key)
            if len(before_kill) == after:
                raise Killed

        with pytest.raises(Killed):
            run_plan_cells({name: config}, store=store, data=data, progress=False, on_cell=stop)
        resumed_cells: list[tuple[str, bool]] = []
        resumed = run_plan_cells(
            {name: config}, store=store, data=data, progress=False,
            on_cell=lambda cell, result, computed: resumed_cells.append((cell.key, computed)),
        )[name]  # fmt: skip
        return KilledAndResumed(before_kill, resumed_cells, resumed)

    return run
