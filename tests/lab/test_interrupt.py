"""The lab's worker pools cut short with real signals sent to a real ``normlab study``.

Each test starts ``python -m normlab study`` in a session of its own, waits until its
worker processes run, sends what a terminal, ``timeout`` or a supervisor would send,
then checks what a user sees: the exit code (130 for SIGINT, 143 for SIGTERM), one line
naming the resume command and no traceback, the time to exit, and that no process of
the session is left running. ``--resume`` then finishes the study from the cells kept.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CELLS = 7  # compare --quick with one seed: seven norms
EXIT_WITHIN_S = 4.0  # the pool ends its workers within 2 s; the interpreter then exits
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "NORMLAB_KERNELS": "0"}  # no kernel build
STUDY = ["study", "--quick", "--only", "compare", "--seeds", "1", "--dataset", "synthetic"]


def start(out: Path, command: list[str] = STUDY) -> subprocess.Popen[str]:
    """``normlab study`` (or ``command``) in a new session (its process group id is its pid)."""
    return subprocess.Popen(
        [sys.executable, "-m", "normlab", *command, "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=ENV,
    )


def living(pgid: int) -> list[str]:
    """The processes of process group ``pgid`` that still run (zombies, which only wait
    for a parent to read their exit status, are not running)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        state, _, group = text.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            found.append(f"{stat.parent.name} {state}")
    return found


def workers_of(pid: int) -> list[int]:
    """The spawned worker processes of ``pid`` (not multiprocessing's resource tracker)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            stat = (cmdline.parent / "stat").read_text()
            command = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and "spawn_main" in command:
            pids.append(int(cmdline.parent.name))
    return pids


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_dir_of(out: Path) -> Path:
    (run_dir,) = out.iterdir()
    return run_dir


def cells_running(process: subprocess.Popen[str], out: Path) -> None:
    """Wait until both workers exist and have had a moment to start a cell."""
    wait_for(lambda: out.is_dir() and any(out.iterdir()), "the run directory")
    wait_for(lambda: len(workers_of(process.pid)) == 2, "two workers")
    time.sleep(1.5)


def ended(process: subprocess.Popen[str], sent: float) -> tuple[str, float]:
    """The process's stderr and its seconds from ``sent`` to exit; asserts that no
    process of its group outlives it by more than a moment."""
    _, stderr = process.communicate(timeout=60)
    seconds = time.monotonic() - sent
    wait_for(lambda: not living(process.pid), "the process group to empty", timeout=3)
    return stderr, seconds


def assert_stopped_cleanly(stderr: str, out: Path, what: str) -> None:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    resume = f"to continue: normlab study --resume {run_dir_of(out)}"
    assert f"normlab study: {what}; finished cells are kept; {resume}" in stderr, stderr


def resume_finishes(out: Path) -> str:
    """``--resume`` the run: it must finish every cell and write the report."""
    run_dir = run_dir_of(out)
    kept = len(list(run_dir.glob("cells/*/*.json")))
    done = subprocess.run(
        [sys.executable, "-m", "normlab", "study", "--resume", str(run_dir), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr
    assert f"{CELLS - kept} cells computed, {kept} already finished" in done.stdout
    assert (run_dir / "results.json").is_file() and (run_dir / "report.html").is_file()
    return done.stdout


@pytest.mark.parametrize(
    ("signals", "code", "what"),
    [
        ((signal.SIGINT,), 130, "interrupted"),  # Ctrl-C: the terminal signals the group
        ((signal.SIGINT, signal.SIGINT), 130, "interrupted"),  # as `timeout -s INT` twice
    ],
    ids=["ctrl-c", "ctrl-c-twice"],
)
def test_ctrl_c_ends_study_and_workers(
    tmp_path: Path, signals: tuple[int, ...], code: int, what: str
) -> None:
    process = start(tmp_path)
    cells_running(process, tmp_path)
    sent = time.monotonic()
    for number in signals:
        os.killpg(process.pid, number)
        time.sleep(0.3)
    stderr, seconds = ended(process, sent)
    assert process.returncode == code, stderr
    assert seconds <= EXIT_WITHIN_S
    assert_stopped_cleanly(stderr, tmp_path, what)


def test_sigterm_ends_study_and_workers_and_resume_finishes(tmp_path: Path) -> None:
    process = start(tmp_path)
    cells_running(process, tmp_path)
    sent = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)  # a supervisor's stop: the main process only
    stderr, seconds = ended(process, sent)
    assert process.returncode == 143, stderr
    assert seconds <= EXIT_WITHIN_S
    assert_stopped_cleanly(stderr, tmp_path, "terminated")
    resume_finishes(tmp_path)


def test_a_worker_killed_names_its_cell_and_the_resume(tmp_path: Path) -> None:
    process = start(tmp_path)
    cells_running(process, tmp_path)
    sent = time.monotonic()
    os.kill(workers_of(process.pid)[0], signal.SIGKILL)
    stderr, seconds = ended(process, sent)
    assert process.returncode == 2, stderr
    assert seconds <= EXIT_WITHIN_S
    assert "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"normlab study: error: the worker process computing cell compare/norm=[a-z-]+/seed=0 "
        r"died \(killed by SIGKILL\); finished cells are kept; to continue: normlab study "
        + re.escape(f"--resume {run_dir_of(tmp_path)}"),
        line,
    ), line


def test_finished_cells_are_kept_across_ctrl_c(tmp_path: Path) -> None:
    process = start(tmp_path)
    wait_for(lambda: list(tmp_path.glob("*/cells/*/*.json")), "a finished cell", timeout=120)
    os.killpg(process.pid, signal.SIGINT)
    stderr, _ = ended(process, time.monotonic())
    assert process.returncode == 130, stderr
    kept = {path: path.read_bytes() for path in tmp_path.glob("*/cells/*/*.json")}
    assert 1 <= len(kept) < CELLS
    resume_finishes(tmp_path)
    assert {path: path.read_bytes() for path in kept} == kept  # not recomputed


def test_worker_errors_and_deaths_reach_the_parent() -> None:
    """An exception in a worker is raised in the parent with its type and the worker's
    traceback; a worker that exits names its task; every worker is reaped either way."""
    from normlab.lab.workers import WorkerDied, run_in_workers

    done: list[dict] = []
    run_in_workers(
        [[("a", 1)], [("b", 2)], [("c", 3)]], dict, lambda t, r, s: done.append(r), workers=2
    )
    assert sorted(done, key=str) == [{"a": 1}, {"b": 2}, {"c": 3}]

    with pytest.raises(TypeError) as raised:  # dict(5): a bug in the cell's code
        run_in_workers([[("a", 1)], 5], dict, lambda *_: None, workers=2, label=repr)
    assert any("raised in the worker computing 5" in note for note in raised.value.__notes__)

    with pytest.raises(WorkerDied, match=r"computing cell 7 died \(exit code 7\)"):
        run_in_workers([7], os._exit, lambda *_: None, workers=1, label=lambda t: f"cell {t}")
    assert not [p for p in workers_of(os.getpid()) if Path(f"/proc/{p}").exists()]


def test_ctrl_c_ends_compare_and_its_workers(tmp_path: Path) -> None:
    process = start(tmp_path, ["compare", "--quick", "--seeds", "1", "--dataset", "synthetic"])
    cells_running(process, tmp_path)
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    stderr, seconds = ended(process, sent)
    assert process.returncode == 130, stderr
    assert seconds <= EXIT_WITHIN_S
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    resume = f"to continue: normlab compare --resume {run_dir_of(tmp_path)}"
    assert f"normlab compare: interrupted; finished cells are kept; {resume}" in stderr
