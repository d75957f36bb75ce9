"""``normlab study``: one run directory, one report, --resume; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.cli.main import main
from normlab.lab import study
from normlab.lab.experiments.compare import CompareConfig
from normlab.lab.experiments.momentum import MomentumConfig

TINY = dict(dataset="synthetic", train_subset=64, test_subset=32, epochs=1, batch_size=16)


def tiny_plan(**kwargs) -> dict:
    """A seconds-long plan in place of the default one (the wiring is what is tested)."""
    seeds = kwargs.get("seeds") or 1
    plan = {
        "compare": CompareConfig(**TINY, norms=("batch", "none"), seeds=seeds),
        "momentum": MomentumConfig(**TINY, momenta=(0.1,), seeds=seeds, evaluations=2),
    }
    only = kwargs.get("experiments")
    return {k: v for k, v in plan.items() if only is None or k in only}


def test_study_then_resume(tmp_path: Path, capsys, monkeypatch) -> None:
    calls = []

    def fake_default_plan(**kwargs):
        calls.append(kwargs)
        return tiny_plan(**kwargs)

    monkeypatch.setattr(study, "default_plan", fake_default_plan)
    argv = ["study", "--quick", "--seeds", "2", "--workers", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert calls[0]["quick"] is True and calls[0]["seeds"] == 2
    report = Path(out.strip().splitlines()[-1])
    assert report.name == "report.html" and report.parent.parent == tmp_path
    assert (report.parent / "report.md").is_file() and (report.parent / "results.json").is_file()
    assert "6 cells computed, 0 already finished" in out  # 2 norms x 2 seeds + 2
    assert "Which normalization?" in out and "Running statistics and momentum" in out

    assert main(["study", "--resume", str(report.parent), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "0 cells computed, 6 already finished" in out
    assert Path(out.strip().splitlines()[-1]) == report


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "--seeds must be an integer >= 1, got 0"),
        (["--only", "compare,nope"], "unknown experiment 'nope'"),
        (["--resume", "RUN", "--quick"], "--resume continues a study with its own settings"),
        (["--resume", "/nonexistent/run"], "is not a directory"),
        (["--threads", "-1"], "--threads must be an integer >= 1, got -1"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    ],
)
def test_study_bad_input_is_one_line(tmp_path: Path, capsys, argv: list, message: str) -> None:
    code = main(["study", *argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("normlab study: error: ")
    assert message in err
