"""A study spread over ranks: the same results.json as one process (timings aside), under
torchrun and when a rank never came (its cells computed on --resume); the ranks' settings
read from the environment with one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from normlab.errors import UsageError
from normlab.lab.ranks import Share, shared_run
from normlab.train.runs import Run

STUDY = ["study", "--quick", "--only", "compare", "--seeds", "1", "--dataset", "synthetic"]
CELLS = 7  # seven norms, one seed
# the tensor code in every process: the same arithmetic whatever kernels are built meanwhile
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "NORMLAB_KERNELS": "0"}
for _variable in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
    ENV.pop(_variable, None)


def untimed(value: Any) -> Any:
    """``value`` without what depends on the clock: keys naming seconds or timing, and
    findings built on timings."""
    if isinstance(value, dict):
        return {
            key: untimed(item)
            for key, item in value.items()
            if "second" not in key and key != "timing"
        }
    if isinstance(value, list):
        return [
            untimed(item)
            for item in value
            if not (isinstance(item, dict) and any("second" in k for k in item.get("numbers", {})))
        ]
    return value


def results(out: Path) -> Any:
    (run_dir,) = out.iterdir()
    return untimed(json.loads((run_dir / "results.json").read_text(encoding="utf-8")))


def normlab(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "normlab", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env=env or ENV,
    )


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The study's results in one process."""
    out = tmp_path_factory.mktemp("alone")
    done = normlab(*STUDY, "--out", str(out), "--no-progress", "--workers", "1")
    assert done.returncode == 0, done.stderr
    return results(out)


@pytest.mark.slow
def test_two_ranks_under_torchrun_give_the_results_of_one_process(tmp_path: Path, alone) -> None:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    study = [*STUDY, "--out", str(tmp_path), "--no-progress", "--workers", "1"]
    done = subprocess.run(
        [*torchrun, "--nproc-per-node", "2", "-m", "normlab", *study],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr
    assert "rank 1 of 2: 3 cells computed" in done.stdout  # cells 1, 3, 5
    assert "4 cells computed, 3 already finished" in done.stdout  # rank 0: 0, 2, 4, 6
    assert len(list(tmp_path.iterdir())) == 1  # one run directory for both ranks
    assert results(tmp_path) == alone


@pytest.mark.slow
def test_a_rank_that_never_came_has_its_cells_computed_on_resume(tmp_path: Path, alone) -> None:
    env = {**ENV, "RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "lonely"}
    rank0 = subprocess.Popen(
        [sys.executable, "-m", "normlab", *STUDY, "--out", str(tmp_path), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("*/cells/*/*.json"))) < 4:  # rank 0's share is done
        if rank0.poll() is not None:
            pytest.fail(f"rank 0 ended early: {rank0.communicate()[1]}")
        assert time.monotonic() < deadline, "rank 0 did not finish its 4 cells"
        time.sleep(0.2)
    time.sleep(1.0)  # rank 0 now waits for rank 1's cells, which never come
    assert rank0.poll() is None
    os.killpg(rank0.pid, signal.SIGINT)
    _, stderr = rank0.communicate(timeout=30)
    assert rank0.returncode == 130 and "Traceback" not in stderr, stderr
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("study-lonely-")
    assert f"to continue: normlab study --resume {run_dir}" in stderr

    done = normlab("study", "--resume", str(run_dir), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "3 cells computed, 4 already finished" in done.stdout
    assert results(tmp_path) == alone


def test_share_of_the_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    assert Share.from_env() == Share()
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UsageError, match="give --run-name NAME"):
        Share.from_env()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id
    with pytest.raises(UsageError, match="give --run-name NAME"):
        Share.from_env()
    share = Share.from_env("night")
    assert (share.rank, share.world_size, share.run_name) == (1, 3, "night")
    assert [i for i in range(8) if share.takes(i)] == [1, 4, 7]
    assert Share.from_env(named=False).run_name is None
    with pytest.raises(UsageError, match="must use only letters"):
        Share.from_env("a/b")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(UsageError, match="RANK=3 must be below WORLD_SIZE=3"):
        Share.from_env("night")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UsageError, match="RANK must be a whole number >= 0, got 'x'"):
        Share.from_env("night")


def test_rank_0_refuses_a_run_name_used_before(tmp_path: Path) -> None:
    def create(name: str) -> Run:
        return Run.create(tmp_path, name, {"plan": {}})

    first = shared_run(tmp_path, "study", Share(0, 2, "night"), create)
    assert first.path.name.startswith("study-night-")
    assert shared_run(tmp_path, "study", Share(1, 2, "night"), create).path == first.path
    with pytest.raises(UsageError, match="run name 'night' was used before"):
        shared_run(tmp_path, "study", Share(0, 2, "night"), create)


def test_rank_settings_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from normlab.cli.main import main

    for variable in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["study", "--run-name", "night", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "normlab study: error: --run-name names a new run shared by several ranks "
        "(torchrun); drop it\n"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["study", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --run-name NAME" in err
    assert not any(tmp_path.iterdir())
