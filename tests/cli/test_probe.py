"""``normlab probe``: runs and reports; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.cli.main import main

TINY = ["--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--epochs", "1"]


def test_probe_runs(tmp_path: Path, capsys) -> None:
    argv = ["probe", *TINY, "--seeds", "1", "--probes", "2", "--probe-batch", "16"]
    code = main([*argv, "--workers", "1", "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    report = Path(out.strip().splitlines()[-1])
    for figure in ("probe-smoothness.png", "probe-layers-sigmoid.png", "probe-layers-relu.png"):
        assert (report.parent / "figures" / figure).is_file()
    assert "loss variation" in out and "Santurkar" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--probes", "1"], "--probes must be an integer >= 2, got 1"),
        (["--step-sizes", "1,0"], "step_sizes must be positive numbers"),
        (["--norms", ""], "--norms needs a comma-separated list"),
        (["--probe-batch", "x"], "--probe-batch must be an integer >= 2, got 'x'"),
    ],
)
def test_probe_bad_input_is_one_line(tmp_path: Path, capsys, argv: list, message: str) -> None:
    code = main(["probe", *argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("normlab probe: error: ")
    assert message in err
