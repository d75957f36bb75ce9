"""``normlab tutorial`` from the command line: the report path last, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.cli.main import main

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
