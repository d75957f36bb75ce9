"""Process groups, bounded waits and launchers: a dead or silent rank never hangs the others.

The failure tests start 2 ranks of this file as a script (``python test_distributed.py
MODE``) with ``normlab.launch.spawn_ranks``; rank 1 dies (``os._exit``) or stops answering,
rank 0 runs SyncBatchNorm and must fail with RankFailure's one-line message, quickly.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

from normlab import distributed, launch
from normlab.distributed import RankFailure
from normlab.errors import UsageError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def worker(mode: str) -> int:
    """Rank 1 dies or sleeps right after joining; rank 0 trains a SyncBatchNorm step."""
    from normlab.nn import SyncBatchNorm

    context = distributed.setup(device="cpu")
    if context.rank == 1:
        if mode == "die":
            os._exit(17)  # no clean-up, no goodbye: as a crash or an OOM kill
        time.sleep(5)  # "hang": alive but silent, longer than rank 0's 2 s timeout
        os._exit(0)
    layer = SyncBatchNorm(4)
    started = time.monotonic()
    try:
        for _ in range(1000):
            layer(torch.randn(8, 4, 2, 2)).sum().backward()
    except RankFailure as error:
        print(f"waited {time.monotonic() - started:.2f} s", flush=True)
        print(f"error: {error}", flush=True)
        os._exit(2)
    print("rank 0 finished without noticing", flush=True)
    return 0


def _rank0(mode: str, timeout: str) -> tuple[launch.RankExit, float]:
    exits = launch.spawn_ranks(
        [sys.executable, __file__, mode], 2, timeout_s=90, env={"NORMLAB_DIST_TIMEOUT": timeout}
    )
    rank0 = exits[0]
    assert not rank0.timed_out, f"rank 0 hung:\n{rank0.output[-2000:]}"
    waited = [line for line in rank0.output.splitlines() if line.startswith("waited ")]
    assert waited, f"rank 0 did not report a failure:\n{rank0.output[-2000:]}"
    return rank0, float(waited[0].split()[1])


def test_a_rank_that_dies_makes_the_other_fail_at_once_with_a_clear_message() -> None:
    rank0, waited = _rank0("die", timeout="60")
    assert rank0.returncode == 2
    message = next(line for line in rank0.output.splitlines() if line.startswith("error: "))
    assert message.startswith("error: rank 0 of 2: SyncBatchNorm")
    assert "another rank probably crashed or stopped answering (timeout 60 s)" in message
    assert waited < 30  # gloo notices the closed connection; far below the 60 s timeout


def test_a_silent_rank_makes_the_other_fail_after_the_timeout() -> None:
    rank0, waited = _rank0("hang", timeout="2")
    assert rank0.returncode == 2
    message = next(line for line in rank0.output.splitlines() if line.startswith("error: "))
    assert "rank 0 of 2: SyncBatchNorm statistics failed" in message
    assert "Timed out" in message and "(timeout 2 s)" in message
    assert 1.5 < waited < 30


def test_a_rank_that_never_joins_makes_setup_fail_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(distributed.free_port()))
    monkeypatch.setenv("NORMLAB_DIST_TIMEOUT", "2")
    started = time.monotonic()
    with pytest.raises(RankFailure, match=r"rank 0 of 2: joining the process group at 127\.0"):
        distributed.setup(device="cpu")
    assert time.monotonic() - started < 20
    assert not torch.distributed.is_initialized()


def test_outside_torchrun_setup_is_a_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    with distributed.process_group(device="cpu") as context:
        assert (context.rank, context.world_size, context.backend) == (0, 1, None)
        assert context.is_main and not context.distributed
    assert not torch.distributed.is_initialized()
    assert distributed.sum_across_ranks([1.5, 2, 3]) == [1.5, 2.0, 3.0]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.group_size() == 1


def test_torchrun_environment_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert distributed.env_ranks() == (3, 4, 3)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UsageError, match=r"inconsistent torchrun environment: RANK=4, WORLD_SIZE"):
        distributed.env_ranks()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UsageError, match=r"environment variable RANK='x' is not an integer"):
        distributed.env_ranks()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(UsageError, match="MASTER_ADDR is not set; launch with torchrun"):
        distributed.setup(device="cpu")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(UsageError, match="unknown distributed backend 'mpi'"):
        distributed.setup(device="cpu", backend="mpi")


def test_timeout_comes_from_the_argument_the_environment_or_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NORMLAB_DIST_TIMEOUT", raising=False)
    assert distributed.timeout_seconds() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv("NORMLAB_DIST_TIMEOUT", "7.5")
    assert distributed.timeout_seconds() == 7.5
    assert distributed.timeout_seconds(3) == 3.0
    monkeypatch.setenv("NORMLAB_DIST_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="NORMLAB_DIST_TIMEOUT='soon' is not a number"):
        distributed.timeout_seconds()
    with pytest.raises(UsageError, match="must be a positive number, got 0"):
        distributed.timeout_seconds(0)


def test_spawn_ranks_sets_torchrun_variables_and_kills_at_the_deadline(tmp_path: Path) -> None:
    show = (
        "import os; print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['MASTER_PORT'])"
    )
    exits = launch.spawn_ranks([sys.executable, "-c", show], 3, timeout_s=60)
    assert [e.returncode for e in exits] == [0, 0, 0]
    fields = [e.output.split() for e in exits]
    assert [f[:2] for f in fields] == [["0", "3"], ["1", "3"], ["2", "3"]]
    assert len({f[2] for f in fields}) == 1  # one rendezvous port for all
    started = time.monotonic()
    slow = [sys.executable, "-c", "import os, time; time.sleep(60 * (os.environ['RANK'] == '1'))"]
    exits = launch.spawn_ranks(slow, 2, timeout_s=1.0)
    assert time.monotonic() - started < 20
    assert [e.returncode for e in exits] == [0, None] and exits[1].timed_out
    with pytest.raises(UsageError, match="world_size must be a positive integer, got 0"):
        launch.spawn_ranks(slow, 0)


def test_torchrun_command_runs_normlab_as_a_module() -> None:
    command = launch.torchrun_command(3, ["train", "--epochs", "1"])
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=3" in command and "--standalone" in command
    assert command[-5:] == ["-m", "normlab", "train", "--epochs", "1"]
    with pytest.raises(UsageError, match="--nproc-per-node must be a positive integer, got 0"):
        launch.torchrun_command(0, [])


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1]))
