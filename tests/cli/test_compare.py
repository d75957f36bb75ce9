"""``normlab compare``: runs into a run directory, prints the table and the report path;
bad input is one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.cli.main import main

TINY = ["--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--epochs", "1"]
RUN = ["--workers", "1", "--no-progress"]


def test_compare_prints_table_and_report_path(tmp_path: Path, capsys) -> None:
    argv = ["compare", *TINY, *RUN, "--seeds", "2", "--norms", "batch,none", "--out", str(tmp_path)]
    code = main([*argv, "--batch-size", "16"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.strip().splitlines()
    report = Path(lines[-1])
    assert report.name == "report.html" and report.is_file()
    assert report.parent.parent == tmp_path and report.parent.name.startswith("compare-")
    assert (report.parent / "figures" / "compare.png").is_file()
    assert len(list((report.parent / "cells" / "compare").glob("*.json"))) == 4
    header = next(line for line in lines if line.startswith("norm "))
    assert "test accuracy" in header and "time / epoch" in header
    rows = [line.split()[0] for line in lines if line.startswith(("batch ", "none "))]
    assert rows == ["batch", "none"]
    assert "Findings:" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--norms", "batch,foo"], "unknown norm 'foo'"),
        (["--seeds", "0"], "--seeds must be an integer >= 1, got 0"),
        (["--seeds", "two"], "--seeds must be an integer >= 1, got 'two'"),
        (["--train-subset", "1"], "--train-subset must be an integer >= 2, got 1"),
        (["--lr", "fast"], "--lr must be a number, got 'fast'"),
        (["--lr", "-1"], "lr must be positive"),
        (["--activation", "swish"], "unknown activation 'swish'"),
        (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    ],
)
def test_compare_bad_input_is_one_line(tmp_path: Path, capsys, argv: list, message: str) -> None:
    code = main(["compare", *argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("normlab compare: error: ")
    assert message in err
    assert not list(tmp_path.iterdir())  # nothing was started
