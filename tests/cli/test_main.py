"""The dispatcher: every command registered, one-line usage errors, --threads, bad
environment variables (exit code 2 and one line, never a traceback)."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest
import torch

from normlab import cli as commands
from normlab.cli.main import DEFAULT_THREADS, build_parser, main, threads_from_env


def test_every_command_module_is_a_subcommand() -> None:
    modules = pkgutil.iter_modules(commands.__path__)
    names = {m.name for m in modules if not m.name.startswith("_") and m.name != "main"}
    choices = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert names == choices
    assert {"tutorial", "train", "check", "data", "shift", "bench", "study"} <= choices


def test_usage_errors_are_one_line_with_exit_code_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["shift", "--samples", "abc"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "invalid int value: 'abc'" in err and "--help" in err


def test_threads(capsys) -> None:
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["--threads", "-1", "shift"])
        assert exit_.value.code == 2
        assert "--threads must be 0" in capsys.readouterr().err
        torch.set_num_threads(2)
        assert main(["--threads", "1", "data", "status"]) in (0, 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("value", ["abc", "1.5", "-1", "2x"])
def test_bad_threads_variable_keeps_help_and_fails_commands_in_one_line(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NORMLAB_THREADS", value)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "NORMLAB_THREADS" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["data", "status"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert f"NORMLAB_THREADS must be a whole number >= 0, got {value!r}" in lines[0]
    assert "unset it or set e.g. NORMLAB_THREADS=1" in lines[0]


def test_threads_flag_overrides_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NORMLAB_THREADS", "abc")
    monkeypatch.delenv("NORMLAB_DATA", raising=False)
    assert main(["--threads", "0", "data", "status", "--data-dir", str(tmp_path)]) == 0
    assert "NORMLAB_THREADS" not in capsys.readouterr().err


@pytest.mark.parametrize(("value", "threads"), [("", DEFAULT_THREADS), (" 3 ", 3), ("0", 0)])
def test_threads_variable_values(value: str, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMLAB_THREADS", value)
    assert threads_from_env() == threads
    monkeypatch.delenv("NORMLAB_THREADS")
    assert threads_from_env() == DEFAULT_THREADS


def test_data_variable_naming_no_folder_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nonexistent"
    monkeypatch.setenv("NORMLAB_DATA", str(missing))
    for argv in (["data", "status"], ["data", "verify"]):
        assert main(["--threads", "0", *argv]) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, captured.err
        assert f"NORMLAB_DATA={missing} is not a folder; unset it" in lines[0]
        assert "Traceback" not in captured.err


def test_an_internal_type_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TypeError is a bug, not bad input: the CLI must not hide it behind exit code 2."""
    from normlab.cli import shift

    def broken(args: object) -> int:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(shift, "run", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["shift"])


def test_a_closed_pipe_ends_quietly() -> None:
    """``normlab --version``-style output into a reader that has gone: no traceback."""
    import subprocess
    import sys

    code = "import sys; from normlab.cli.main import main; sys.exit(main(['info']))"
    reader = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert reader.stdout is not None
    reader.stdout.close()  # the reader goes away before normlab writes
    _, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_sigterm_is_an_interrupt_inside_a_command_only(capsys: pytest.CaptureFixture) -> None:
    """SIGTERM raises Terminated (a KeyboardInterrupt, so clean-ups run) while a command
    runs; the message names the resume command noted on it; exit codes 143 and 130."""
    import os
    import signal

    from normlab.cli.main import Terminated, interrupted, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as caught, sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # not reached: the handler raises first
    assert signal.getsignal(signal.SIGTERM) is before
    caught.value.add_note("to continue: normlab train --resume runs/x")
    assert interrupted("train", caught.value) == 143
    assert capsys.readouterr().err == (
        "normlab train: terminated; to continue: normlab train --resume runs/x\n"
    )
    assert interrupted("info", KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == "normlab info: interrupted\n"
