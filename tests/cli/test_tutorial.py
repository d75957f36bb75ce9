"""``normlab tutorial`` from the command line: the report path last, one-line errors."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normlab.cli.main import main
from normlab.train.engine import TIMING_FIELDS, saved_history
from normlab.train.runs import Run

QUICK = [
    "--dataset",
    "synthetic",
    "--epochs",
    "1",
    "--train-subset",
    "128",
    "--test-subset",
    "32",
    "--no-progress",
]


def exit_code(argv: list[str]) -> int:
    """``main(argv)``'s exit code, also when argparse exits."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_tutorial_writes_the_report_and_prints_its_path_last(tmp_path, capfd, workers) -> None:
    assert main(["tutorial", *QUICK, "--workers", workers, "--out", str(tmp_path)]) == 0
    out = capfd.readouterr().out  # capfd: the workers print their epochs themselves
    report = Path(out.strip().splitlines()[-1])
    assert report.name == "report.html" and report.is_file()
    assert (report.parent / "report.md").is_file()
    assert "[normlab BatchNorm] epoch 1/1" in out
    assert "[torch.nn BatchNorm] epoch 1/1" in out
    assert "[no normalization] epoch 1/1" in out
    assert "Covariate shift" in out and "Learned gamma and beta" in out
    arms = sorted(p.name.rsplit("-", 2)[0] for p in report.parent.iterdir() if p.is_dir())
    assert arms == ["batch", "none", "torch-batch"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--norms", "batch,bogus"], "unknown norm 'bogus'"),
        (["--epochs", "0"], "epochs"),
        (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/normlab"], "/nonexistent"),
        (["--epochs", "two"], "invalid int value"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["--train-subset", "0"], "--train-subset must be a positive integer, got 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message) -> None:
    assert exit_code(["tutorial", *QUICK, *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_out_must_be_a_directory(tmp_path, capsys) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["tutorial", *QUICK, "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_help_names_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["tutorial", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text
    assert "(default: discovered) (default:" not in text
    assert "epochs per arm (default: 5)" in text


# ----------------------------------------------------------------------------- SIGINT/SIGTERM
# "none" first: it finishes, then batch norm is interrupted after its first epoch's
# checkpoint (arms checkpoint at epoch ends) and resumes from it.
SIGNAL_ARGS = ["--dataset", "synthetic", "--train-subset", "4096", "--test-subset", "64"]
SIGNAL_ARGS += ["--batch-size", "32", "--epochs", "2", "--lr", "0.05", "--norms", "none,batch"]
SIGNAL_ARGS += ["--no-progress"]
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


def tutorial_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "normlab", "tutorial", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip


def arm_results(tutorial_dir: Path) -> dict[str, tuple[list[dict], list[float]]]:
    """Per arm: its metrics without timing and its step losses (from the checkpoint)."""
    results = {}
    for config in sorted(tutorial_dir.glob("*/config.json")):
        arm = Run.open(config.parent)
        metrics = [
            {k: v for k, v in record.items() if k not in TIMING_FIELDS}
            for record in arm.read_metrics()
        ]
        results[arm.name] = (metrics, saved_history(arm).step_losses)
    return results


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture(scope="module")
def straight_tutorial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("straight")
    process = tutorial_process(*SIGNAL_ARGS, "--workers", "1", "--out", str(root))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    (tutorial_dir,) = root.iterdir()
    return tutorial_dir


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts processes in /proc")
@pytest.mark.slow
@pytest.mark.parametrize(
    ("workers", "signum", "code", "word"),
    [("1", signal.SIGINT, 130, "interrupted"), ("2", signal.SIGTERM, 143, "terminated")],
)
def test_an_interrupted_tutorial_resumes_its_arms_to_the_same_numbers(
    tmp_path: Path, straight_tutorial: Path, workers: str, signum: int, code: int, word: str
) -> None:
    """A real signal to a real tutorial: no traceback, no worker left, one line naming
    ``--resume``; resumed, every arm ends with the numbers of an uninterrupted tutorial."""
    stopped = tutorial_process(*SIGNAL_ARGS, "--workers", workers, "--out", str(tmp_path))
    deadline, workers_seen = time.monotonic() + 120, set()
    batch_checkpoint: list[Path] = []
    while not batch_checkpoint and stopped.poll() is None and time.monotonic() < deadline:
        workers_seen.update(children(stopped.pid))
        batch_checkpoint = list(tmp_path.glob("tutorial-*/batch-*/checkpoint.pt"))
        time.sleep(0.002)
    stopped.send_signal(signum)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == code, f"the tutorial ended before the signal: {err}"
    assert "Traceback" not in err and "Exception ignored" not in err
    assert not [pid for pid in workers_seen if alive(pid)], "workers left running"
    (tutorial_dir,) = tmp_path.iterdir()
    assert err.strip().splitlines()[-1] == (
        f"normlab tutorial: {word}; to continue: normlab tutorial --resume {tutorial_dir}"
    )
    if workers == "1":  # arm after arm: "none" had finished, batch norm had not
        assert (next(tutorial_dir.glob("none-*")) / "summary.json").is_file()
        assert not list(tutorial_dir.glob("batch-*/summary.json"))

    command = err.strip().splitlines()[-1].split("; to continue: normlab ")[1]
    resumed = subprocess.run(
        [sys.executable, "-m", "normlab", *shlex.split(command), "--workers", workers],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming in {tutorial_dir}" in resumed.stdout
    assert resumed.stdout.count("[no normalization] epoch 2/2") == 1  # said once, kept or new
    assert (tutorial_dir / "report.html").is_file()
    assert arm_results(tutorial_dir) == arm_results(straight_tutorial)


def test_resume_refuses_settings_and_out(tmp_path: Path, capsys) -> None:
    assert main(["tutorial", *QUICK, "--norms", "none", "--out", str(tmp_path)]) == 0
    (tutorial_dir,) = tmp_path.iterdir()
    capsys.readouterr()
    assert exit_code(["tutorial", "--resume", str(tutorial_dir), "--epochs", "3",
                      "--out", str(tmp_path)]) == 2  # fmt: skip
    assert capsys.readouterr().err == (
        "normlab tutorial: error: --resume continues the tutorial with its own settings in "
        "its own directory; drop --epochs, --out\n"
    )
    arm = next(tutorial_dir.glob("none-*"))
    assert exit_code(["tutorial", "--resume", str(arm)]) == 2
    assert "is a 'none' run, not a tutorial's" in capsys.readouterr().err
    # a finished tutorial resumes to its report again, training nothing
    before = (arm / "checkpoint.pt").stat().st_mtime_ns
    assert main(["tutorial", "--resume", str(tutorial_dir), "--no-progress"]) == 0
    assert (arm / "checkpoint.pt").stat().st_mtime_ns == before
    assert "[no normalization] epoch 1/1" in capsys.readouterr().out


def test_help_defaults_are_the_configs() -> None:
    from normlab.cli.tutorial import HELP_DEFAULTS
    from normlab.tutorial.pipeline import TutorialConfig

    config = TutorialConfig()
    for name, value in vars(HELP_DEFAULTS).items():
        assert getattr(config, name) == value, name
