"""``normlab sweep lr|batch-size|placement|momentum``: each runs; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.cli.main import main

TINY = ["--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--epochs", "1"]
RUN = ["--workers", "1", "--no-progress", "--seeds", "1"]


@pytest.mark.parametrize(
    ("what", "extra", "title", "cells"),
    [
        ("lr", ["--lrs", "0.1,1", "--norms", "batch"], "Higher learning rates", 2),
        ("batch-size", ["--batch-sizes", "8,32", "--arms", "batch,group"], "Small batches", 4),
        ("momentum", ["--momenta", "0.1"], "Running statistics and momentum", 1),
    ],
)
def test_sweeps_run(tmp_path: Path, capsys, what: str, extra: list, title: str, cells: int) -> None:
    code = main(["sweep", what, *TINY, *RUN, *extra, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    report = Path(out.strip().splitlines()[-1])
    assert report.is_file() and title in report.read_text(encoding="utf-8")
    assert title in out
    assert len(list((report.parent / "cells").glob("*/*.json"))) == cells


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lrs"], "unknown sweep 'lrs'; valid: lr, batch-size, placement, momentum"),
        (["lr", "--lrs", "0.1,abc"], "--lrs must be numbers separated by commas, got 'abc'"),
        (["lr", "--lrs", "0.1,-2"], "lrs must be positive numbers, got -2.0"),
        (["lr", "--lrs", "0.1,,0.2"], "--lrs has an empty item in '0.1,,0.2'"),
        (["lr", "--lr", "0.1"], "sweep lr takes its rates from --lrs, not --lr"),
        (["lr", "--momenta", "0.1"], "--momenta does not apply to `sweep lr`"),
        (["batch-size", "--batch-sizes", "1,8"], "every batch size must be an integer >= 2"),
        (["batch-size", "--arms", "batch,nope"], "unknown arm 'nope'"),
        (["batch-size", "--lr-scaling", "sqrt"], "unknown lr_scaling 'sqrt'"),
        (["momentum", "--momenta", "0,0.1"], "momentum must be in (0, 1]"),
        (["placement", "--activations", "swish"], "unknown activation 'swish'"),
    ],
)
def test_sweep_bad_input_is_one_line(tmp_path: Path, capsys, argv: list, message: str) -> None:
    code = main(["sweep", *argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("normlab sweep: error: ")
    assert message in err
