"""``normlab train``: a run end to end, every bad input (one line, exit 2), divergence
(exit 1), and a run killed with SIGKILL mid-epoch that resumes to exactly the metrics of an
uninterrupted run."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from normlab.cli.main import main
from normlab.nn import norm_names
from normlab.train.config import TrainConfig
from normlab.train.engine import TIMING_FIELDS
from normlab.train.runs import Run

TINY = ["--dataset", "synthetic", "--train-subset", "128", "--test-subset", "32"]
TINY += ["--batch-size", "32", "--norm", "torch-batch", "--no-progress"]


def only_run(root: Path) -> Path:
    runs = list(root.iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_train_writes_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["train", *TINY, "--epochs", "2", "--lr", "0.1", "--out", str(tmp_path),
                 "--name", "smoke"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    run_dir = only_run(tmp_path)
    assert run_dir.name.startswith("smoke-")
    lines = out.strip().splitlines()
    assert lines[-1] == f"run directory: {run_dir}"
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/2", "2/2"]
    for name in ("config.json", "metrics.jsonl", "train.log", "checkpoint.pt", "summary.json"):
        assert (run_dir / name).is_file(), name
    run = Run.open(run_dir)
    assert run.config == TrainConfig(
        dataset="synthetic",
        norm="torch-batch",
        batch_size=32,
        train_subset=128,
        test_subset=32,
        epochs=2,
        lr=0.1,
    )
    metrics = run.read_metrics()
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert f"{100 * metrics[1]['test_accuracy']:.2f}%" in lines[-2]
    assert "epoch 2/2" in (run_dir / "train.log").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--norm", "batchnorm"], "unknown norm 'batchnorm'; valid: " + ", ".join(norm_names())),
        (["--lr", "0"], "--lr must be positive, got 0.0"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
        (["--batch-size", "-4"], "--batch-size must be a positive integer, got -4"),
        (["--momentum", "1.5"], "--momentum must be in [0, 1), got 1.5"),
        (["--activation", "swish"], "unknown activation 'swish'; valid: sigmoid, relu, tanh, gelu"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0, got -1"),
        (["--name", "a b"], "run name 'a b' must use only letters, digits, '.', '_', '-'"),
        (["--eval-batch-size", "0"], "--eval-batch-size must be a positive integer, got 0"),
        (["--device", "tpu"], "unknown device 'tpu'; use cpu, cuda, cuda:N or mps"),
        (["--nproc-per-node", "0"], "--nproc-per-node must be a positive integer, got 0"),
        (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    ],
)
def test_bad_values_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    base = ["--dataset", "synthetic", "--train-subset", "128", "--no-progress"]
    assert main(["train", *base, *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"normlab train: error: {message}\n"
    assert not any(tmp_path.iterdir())  # nothing created for a bad command


def test_unparsable_flag_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--lr", "fast"])
    assert info.value.code == 2
    assert "argument --lr: invalid float value: 'fast'" in capsys.readouterr().err


def test_missing_data_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train", "--data-dir", str(empty), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("normlab train: error: ") and err.count("\n") == 1
    assert "fashion-mnist" in err and str(empty) in err
    assert not (tmp_path / "runs").exists()


def test_resume_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "is not a run directory (no config.json)" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.5", "--epochs", "3"]) == 2
    assert capsys.readouterr().err == (
        "normlab train: error: --resume continues the run with its own settings; "
        "drop --lr, --epochs\n"
    )


def test_resuming_a_finished_run_does_nothing(tmp_path: Path, capsys) -> None:
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path)]) == 0
    run_dir = only_run(tmp_path)
    before = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already finished all 1 epochs" in out and "epoch 1/1" in out
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == before


def test_divergence_exits_1_and_keeps_a_finite_checkpoint(tmp_path: Path, capsys) -> None:
    args = [*TINY, "--activation", "relu", "--lr", "1e6", "--checkpoint-every", "1"]
    assert main(["train", *args, "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    run_dir = only_run(tmp_path)
    assert "normlab train: diverged at step " in captured.err
    assert "try a lower --lr" in captured.err and str(run_dir) in captured.err
    assert captured.out.strip().splitlines()[-1] == f"run directory: {run_dir}"
    state = Run.open(run_dir).load_checkpoint()
    assert all(torch.isfinite(t.double()).all() for t in state["model"].values())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"
    assert "training diverged" in (run_dir / "train.log").read_text()
    # resuming would diverge again: refused with a way out
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "start a new run with a lower --lr" in capsys.readouterr().err


# ----------------------------------------------------------------------------- SIGKILL
KILL_ARGS = ["--dataset", "synthetic", "--train-subset", "512", "--test-subset", "64"]
KILL_ARGS += ["--batch-size", "16", "--epochs", "2", "--lr", "0.05", "--norm", "batch"]
KILL_ARGS += ["--checkpoint-every", "4", "--no-progress", "--name", "kill"]
# One thread per process: two runs share the two cores without OpenMP spin-waiting.
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


def train_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "normlab", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def metrics_without_timing(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in record.items() if k not in TIMING_FIELDS}
        for record in Run.open(run_dir).read_metrics()
    ]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_mid_epoch_then_resume_gives_exactly_the_same_metrics(tmp_path: Path) -> None:
    straight = train_process(*KILL_ARGS, "--out", str(tmp_path / "straight"))
    killed = train_process(*KILL_ARGS, "--out", str(tmp_path / "killed"))
    deadline = time.monotonic() + 120
    checkpoints: list[Path] = []
    while not checkpoints and killed.poll() is None and time.monotonic() < deadline:
        checkpoints = list((tmp_path / "killed").glob("*/checkpoint.pt"))
        time.sleep(0.002)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    run_dir = only_run(tmp_path / "killed")
    state = Run.open(run_dir).load_checkpoint()
    assert state["epoch"] < 2 and state["step_in_epoch"] > 0, "killed at an epoch boundary"
    assert not (run_dir / "summary.json").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "normlab", "train", "--resume", str(run_dir), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == f"run directory: {run_dir}"
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    straight_dir = only_run(tmp_path / "straight")

    expected = metrics_without_timing(straight_dir)
    assert len(expected) == 2
    assert metrics_without_timing(run_dir) == expected  # bit-for-bit equal floats
    final = Run.open(run_dir).load_checkpoint()
    reference = Run.open(straight_dir).load_checkpoint()
    for key, tensor in reference["model"].items():
        assert torch.equal(final["model"][key], tensor), key
    assert final["history"]["step_losses"].tolist() == reference["history"]["step_losses"].tolist()


# ----------------------------------------------------------------------------- SIGINT/SIGTERM
def wait_for_checkpoint(process: subprocess.Popen, root: Path) -> None:
    """Poll until a run under ``root`` holds a checkpoint (the run is then mid-training)."""
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if list(root.glob("*/checkpoint.pt")):
            return
        time.sleep(0.002)


def continue_command(err: str, command: str) -> list[str]:
    """The resume command the last line of ``err`` names, as arguments of ``normlab``."""
    _, _, command_line = err.strip().splitlines()[-1].partition("; to continue: normlab ")
    words = shlex.split(command_line)
    assert words[0] == command, err
    return words


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("straight")
    process = train_process(*KILL_ARGS, "--out", str(root))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return only_run(root)


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_an_interrupted_run_names_its_resume_command_which_ends_it_exactly(
    tmp_path: Path, straight_run: Path, signum: int, code: int, word: str
) -> None:
    """Ctrl-C or SIGTERM mid-epoch: no traceback, one line naming the resume command, and
    that command finishes the run to the metrics of an uninterrupted one, bit for bit."""
    stopped = train_process(*KILL_ARGS, "--out", str(tmp_path))
    wait_for_checkpoint(stopped, tmp_path)
    stopped.send_signal(signum)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == code, f"the run ended before the signal: {err}"
    assert "Traceback" not in err
    run_dir = only_run(tmp_path)
    assert err.strip().splitlines()[-1] == (
        f"normlab train: {word}; to continue: normlab train --resume {run_dir}"
    )
    assert not (run_dir / "summary.json").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "normlab", *continue_command(err, "train"), "--no-progress"],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_without_timing(run_dir) == metrics_without_timing(straight_run)
    final = Run.open(run_dir).load_checkpoint()["history"]["step_losses"]
    reference = Run.open(straight_run).load_checkpoint()["history"]["step_losses"]
    assert final.tolist() == reference.tolist()


def test_resume_refuses_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    run_dir = only_run(tmp_path / "a")
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"normlab train: error: --resume continues the run in its own directory {run_dir}; "
        "drop --out (a run cannot move)\n"
    )
    assert not (tmp_path / "b").exists()


def test_train_subset_all_is_every_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--dataset", "synthetic", "--train-subset", "all", "--test-subset", "ALL"]
    args += ["--epochs", "1", "--norm", "none", "--no-progress", "--out", str(tmp_path)]
    assert main(["train", *args]) == 0
    config = Run.open(only_run(tmp_path)).config
    assert (config.train_subset, config.test_subset) == (None, None)
    assert "(1000 train, 200 test)" in capsys.readouterr().out  # synthetic's full size
    with pytest.raises(SystemExit):
        main(["train", "--train-subset", "most"])
    assert "give a number of images or 'all'" in capsys.readouterr().err


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder no one can create files in: mode 0o500, or immutable for root."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root without chattr +i cannot make an unwritable folder")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("where", ["file", "under-file", "unwritable"])
def test_an_unusable_out_is_one_line_naming_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture, where: str, request: pytest.FixtureRequest
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out, problem = {
        "file": (a_file, "is a file"),
        "under-file": (a_file / "runs", "lies under a file"),
        "unwritable": (None, "is not writable ("),
    }[where]
    if out is None:
        out = request.getfixturevalue("unwritable_dir") / "runs"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"normlab train: error: --out {out} {problem}") and err.count("\n") == 1
    assert err.endswith("; pass --out with a folder you can write to\n")
