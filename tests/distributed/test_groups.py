"""Process groups, bounded waits, launchers, and ``normlab train`` on 2 processes.

The failure tests start 2 ranks of this file as a script (``python test_distributed.py
MODE``) with
``normlab.distributed.launch.spawn_ranks``; rank 1 dies (``os._exit``) or stops answering,
rank 0 runs SyncBatchNorm and must fail with RankFailure's one-line message, quickly.

The training test starts ``normlab train --sync-bn`` as 2 ranks, SIGKILLs them after the
first checkpoint, resumes with ``normlab train --resume`` (relaunched through torchrun),
and compares every step with one process fed the concatenation of the two ranks' batches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from normlab.cli.main import main
from normlab.data import batches
from normlab.distributed import groups as distributed
from normlab.distributed import launch
from normlab.distributed.groups import RankFailure
from normlab.errors import UsageError
from normlab.train import engine
from normlab.train.config import TrainConfig
from normlab.train.runs import Run

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def worker(mode: str) -> int:
    """Rank 1 dies or sleeps right after joining; rank 0 trains a SyncBatchNorm step."""
    from normlab.nn import SyncBatchNorm

    context = distributed.setup(device="cpu")
    if context.rank == 1:
        if mode == "die":
            os._exit(17)  # no clean-up, no goodbye: as a crash or an OOM kill
        time.sleep(3)  # "hang": alive but silent, longer than rank 0's 1 s timeout
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
    rank0, waited = _rank0("hang", timeout="1")
    assert rank0.returncode == 2
    message = next(line for line in rank0.output.splitlines() if line.startswith("error: "))
    assert "rank 0 of 2: SyncBatchNorm statistics failed" in message
    assert "Timed out" in message and "(timeout 1 s)" in message
    assert 0.8 < waited < 30


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


# ------------------------------------------------------------------ normlab train, 2 ranks
DDP = TrainConfig(dataset="synthetic", train_subset=384, test_subset=64, batch_size=16,
                  epochs=2, lr=0.05, activation="relu", world_size=2, sync_bn=True)  # fmt: skip
DDP_ARGS = ["train", "--dataset", "synthetic", "--train-subset", "384", "--test-subset", "64"]
DDP_ARGS += ["--batch-size", "16", "--epochs", "2", "--lr", "0.05", "--activation", "relu"]
DDP_ARGS += ["--sync-bn", "--checkpoint-every", "5", "--no-progress"]


def _one_process_on_concatenated_batches(config: TrainConfig) -> dict[str, object]:
    """The oracle: one process, plain batch norm, each step on rank 0's batch + rank 1's.

    With SyncBatchNorm the statistics are the global batch's; DDP averages the two ranks'
    gradients of their mean losses, which for equal halves is the gradient of the mean
    loss over the concatenation. So both runs take the same steps, up to rounding.
    """
    single = config.replace(world_size=1, sync_bn=False)
    data = engine.load_data(single)
    model = engine.build_model(single)
    optimizer = engine.make_optimizer(model, single)
    losses, epochs = [], []
    for epoch in range(config.epochs):
        shards = [
            batches(data.train_images, data.train_labels, config.batch_size, shuffle=True,
                    seed=config.seed, epoch=epoch, rank=r, world_size=2)
            for r in range(2)
        ]  # fmt: skip
        total_loss, correct, seen = 0.0, 0, 0
        for (x0, y0), (x1, y1) in zip(*shards, strict=True):
            x, y = torch.cat([x0, x1]), torch.cat([y0, y1])
            optimizer.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            total_loss += losses[-1] * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
        test_loss, test_accuracy = engine.evaluate(
            model, data.test_images, data.test_labels, batch_size=config.eval_batch_size
        )
        epochs.append({"train_loss": total_loss / seen, "train_accuracy": correct / seen,
                       "test_loss": test_loss, "test_accuracy": test_accuracy,
                       "examples": seen})  # fmt: skip
    return {"model": model.state_dict(), "losses": losses, "epochs": epochs}


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_two_rank_sync_bn_training_killed_and_resumed_equals_one_process(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    out = tmp_path / "runs"
    port = distributed.free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NORMLAB_DIST_TIMEOUT": "60"}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-m", "normlab", *DDP_ARGS, "--out", str(out), "--name", "ddp"],
            env={**env, **launch.rank_environment(r, 2, port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    deadline = time.monotonic() + 120
    checkpoints: list[Path] = []
    while not checkpoints and ranks[0].poll() is None and time.monotonic() < deadline:
        checkpoints = list(out.glob("*/checkpoint.pt"))
        time.sleep(0.002)
    for rank in ranks:
        rank.send_signal(signal.SIGKILL)
    outputs = [rank.communicate()[0] for rank in ranks]
    assert ranks[0].returncode == -signal.SIGKILL, f"ended before the kill:\n{outputs[0]}"
    run_dirs = list(out.iterdir())
    assert len(run_dirs) == 1, run_dirs  # only rank 0 creates a run directory
    run_dir = run_dirs[0]
    killed_at = Run.open(run_dir).load_checkpoint()
    assert (killed_at["epoch"], killed_at["step_in_epoch"]) < (DDP.epochs, 0)
    assert json.loads((run_dir / "config.json").read_text())["config"]["world_size"] == 2

    capfd.readouterr()
    code = main(["train", "--resume", str(run_dir), "--no-progress"])  # relaunches 2 ranks
    printed = capfd.readouterr().out
    assert code == 0, printed
    assert printed.strip().splitlines()[-1] == f"run directory: {run_dir}"
    assert "on 2 processes sync-bn" in printed

    oracle = _one_process_on_concatenated_batches(DDP)
    final = Run.open(run_dir).load_checkpoint()
    assert final["history"]["step_losses"].tolist() == pytest.approx(oracle["losses"], abs=1e-4)
    assert list(final["model"]) == list(oracle["model"])
    for key, value in oracle["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=1e-3, atol=1e-4)
    metrics = Run.open(run_dir).read_metrics()
    assert len(metrics) == DDP.epochs
    for ours, expected in zip(metrics, oracle["epochs"], strict=True):
        assert ours["examples"] == expected["examples"] == 384  # the global epoch
        for key in ("train_loss", "test_loss"):
            assert ours[key] == pytest.approx(expected[key], abs=1e-4), key
        for key in ("train_accuracy", "test_accuracy"):
            assert ours[key] == pytest.approx(expected[key], abs=2 / 384), key


def test_train_flags_for_several_processes_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = ["train", "--dataset", "synthetic", "--out", str(tmp_path), "--no-progress"]
    assert main([*tiny, "--sync-bn", "--norm", "group"]) == 2
    assert "norm 'group' has none; use --norm batch or drop --sync-bn" in capsys.readouterr().err
    assert main([*tiny, "--nproc-per-node", "0"]) == 2
    assert "--nproc-per-node must be a positive integer, got 0" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "3")  # as if torchrun had started 3 ranks
    monkeypatch.setenv("RANK", "0")
    assert main([*tiny, "--nproc-per-node", "2"]) == 2
    err = capsys.readouterr().err
    assert "this run needs 2 processes but torchrun started 3; use --nproc-per-node 2" in err
    assert not any(tmp_path.iterdir())


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1]))
