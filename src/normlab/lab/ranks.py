"""A study spread over several processes, on one machine or several: torchrun's ranks.

Under ``torchrun --nnodes N --nproc-per-node M -m normlab study --out SHARED_DIR`` every
rank runs the same plan into the same run directory on a shared filesystem and computes
its share of the cells: cell ``i`` of the plan (in the plan's order) belongs to rank
``i % WORLD_SIZE``. No process group is formed; the ranks meet only through files:

- **the run directory**: rank 0 creates ``<out>/<name>-<run name>-<timestamp>``, the
  others wait for exactly one such directory (:func:`shared_run`). The run name is
  ``--run-name`` or torchrun's ``TORCHELASTIC_RUN_ID`` (the same on every rank of a
  launch); a run name already used under ``--out`` is refused.
- **the cells**: each finished cell is its atomic file (:class:`~normlab.lab.cells.CellStore`),
  so rank 0, having computed its own share, waits for the others' files
  (:func:`wait_for_cells`), then summarises every experiment and writes the report.

A rank that dies leaves its finished cells; ``--resume`` (with any number of ranks)
computes only the missing ones.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from normlab.errors import UsageError
from normlab.lab.cells import CellStore
from normlab.lab.experiment import CellTask

if TYPE_CHECKING:
    from normlab.train.runs import Run

__all__ = ["POLL_S", "Share", "shared_run", "wait_for_cells"]

POLL_S = 0.5  # seconds between looks at the shared directory
RUN_DIR_WAIT_S = 600.0  # how long ranks other than 0 wait for rank 0's run directory


@dataclass(frozen=True)
class Share:
    """This process's share of a study's cells.

    Args:
        rank: this process's rank, ``0 .. world_size - 1``; rank 0 writes the report.
        world_size: processes sharing the study (1: all cells here).
        run_name: the name every rank gives the run (None when alone).
        local_world_size: ranks on this machine (to share its cores among them).
    """

    rank: int = 0
    world_size: int = 1
    run_name: str | None = None
    local_world_size: int = 1

    @classmethod
    def from_env(cls, run_name: str | None = None, *, named: bool = True) -> Share:
        """The share torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE`` give
        (alone when ``WORLD_SIZE`` is unset); ``run_name`` defaults to
        ``TORCHELASTIC_RUN_ID``. ``named=False``: no run name is needed (a resumed run's
        directory is given).

        Raises:
            UsageError: a variable is not a valid number, or several ranks lack a run name.
        """
        world_size = _env_int("WORLD_SIZE", 1, minimum=1)
        rank = _env_int("RANK", 0, minimum=0)
        if rank >= world_size:
            raise UsageError(f"RANK={rank} must be below WORLD_SIZE={world_size}")
        if world_size == 1:
            return cls()
        local = _env_int("LOCAL_WORLD_SIZE", world_size, minimum=1)
        if not named:
            return cls(rank, world_size, None, local)
        name = run_name or os.environ.get("TORCHELASTIC_RUN_ID", "")
        if not name or name == "none":  # torchrun's id when --rdzv-id is not given
            raise UsageError(
                "several ranks need one run name: give --run-name NAME (the same on every "
                "machine) or torchrun --rdzv-id ID"
            )
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise UsageError(f"run name {name!r} must use only letters, digits, '.', '_', '-'")
        return cls(rank, world_size, name, local)

    def takes(self, index: int) -> bool:
        """Whether cell ``index`` of the plan is this rank's."""
        return index % self.world_size == self.rank

    def mine(self, tasks: Sequence[CellTask]) -> list[CellTask]:
        """This rank's tasks, in order."""
        return [task for index, task in enumerate(tasks) if self.takes(index)]


def _env_int(variable: str, default: int, *, minimum: int) -> int:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or int(text) < minimum:
        raise UsageError(f"{variable} must be a whole number >= {minimum}, got {text!r}")
    return int(text)


def shared_run(
    out: str | os.PathLike[str], name: str, share: Share, create: Callable[[str], Run]
) -> Run:
    """The run directory every rank of ``share`` uses: rank 0 makes it with
    ``create(f"{name}-{run_name}")``; the others wait for it (at most
    :data:`RUN_DIR_WAIT_S`) and open it.

    Raises:
        UsageError: the run name was used before under ``out`` (rank 0), or rank 0 made
            no run directory in time.
    """
    from normlab.train.runs import CONFIG_FILE, Run

    prefix = f"{name}-{share.run_name}"
    pattern = f"{prefix}-[0-9]*"
    if share.rank == 0:
        used = sorted(Path(out).glob(pattern))
        if used:
            raise UsageError(
                f"run name {share.run_name!r} was used before ({used[0]}); resume it with "
                "--resume, or give another --run-name"
            )
        return create(prefix)
    deadline = time.monotonic() + RUN_DIR_WAIT_S
    while True:
        found = sorted(Path(out).glob(f"{pattern}/{CONFIG_FILE}"))
        if len(found) == 1:
            return Run.open(found[0].parent)
        if len(found) > 1:
            raise UsageError(f"several runs named {share.run_name!r} under {out}; give --run-name")
        if time.monotonic() > deadline:
            raise UsageError(
                f"rank 0 made no run directory {prefix}-* under {out} within "
                f"{RUN_DIR_WAIT_S:.0f} s; is --out the same shared folder on every machine?"
            )
        time.sleep(POLL_S)


def wait_for_cells(store: CellStore, tasks: Sequence[CellTask], *, progress: bool = True) -> None:
    """Wait until every task's cell file exists (the other ranks' shares), with a bar."""
    from tqdm.auto import tqdm

    missing = [task for task in tasks if not store.path(task.cell).is_file()]
    with tqdm(
        total=len(missing), desc="other ranks' cells", unit="cell", disable=not progress
    ) as bar:
        while missing:
            time.sleep(POLL_S)
            still = [task for task in missing if not store.path(task.cell).is_file()]
            bar.update(len(missing) - len(still))
            missing = still
