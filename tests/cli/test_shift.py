"""``normlab shift``: runs, writes the PNG, prints the numbers; bad input is one line + exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.cli.main import main
from normlab.lab.experiments.shift import covariate_shift

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_shift_writes_png_and_prints_summary(tmp_path: Path, capsys) -> None:
    out = tmp_path / "shift-out"
    code = main(["shift", "--samples", "400", "--seed", "3", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert lines[-1] == str(out / "shift.png")  # the PNG path is printed last
    assert (out / "shift.png").read_bytes().startswith(PNG_SIGNATURE)
    # the printed numbers are the experiment's numbers
    result = covariate_shift(num_samples=400, seed=3)
    before = next(line for line in lines if line.startswith("before"))
    after = next(line for line in lines if line.startswith("after standardising"))
    assert f"{result.test_before.mean:.3f}" in before.split()
    assert f"{result.ks_before.statistic:.3f}" in before.split()
    assert f"{result.ks_after.statistic:.3f}" in after.split()
    assert after.split()[2:6] == ["0.000", "1.000", "0.000", "1.000"]
    assert "location and scale" in captured.out


def test_shift_parameters_and_skewed_shape(tmp_path: Path, capsys) -> None:
    args = ["shift", "--samples", "300", "--train-mean", "5", "--train-std", "0.5"]
    args += ["--test-mean", "-1", "--test-std", "2", "--test-shape", "skewed"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "from N(5, 0.5²)" in out and "skewed(-1, 2²)" in out
    result = covariate_shift(300, (5.0, 0.5), (-1.0, 2.0), test_shape="skewed")
    assert f"{result.train_before.mean:.3f}" in out
    assert "not shape" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--samples", "1"], "--samples must be between 2 and 10000000 (got 1)"),
        (["--train-std", "0"], "--train-std must be a standard deviation > 0 (got 0.0)"),
        (["--test-std", "-1.5"], "--test-std must be a standard deviation > 0 (got -1.5)"),
        (["--test-std", "nan"], "--test-std must be a standard deviation > 0 (got nan)"),
        (["--test-mean", "inf"], "--test-mean must be a finite number"),
    ],
)
def test_shift_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys
) -> None:
    code = main(["shift", *argv, "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == f"normlab shift: error: {message}\n"
    assert not (tmp_path / "shift.png").exists()


def test_shift_out_is_a_file(tmp_path: Path, capsys) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["shift", "--out", str(target)]) == 2
    assert capsys.readouterr().err == (
        f"normlab shift: error: --out {target} is a file; pass a directory\n"
    )
