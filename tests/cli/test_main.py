"""The dispatcher: every command registered, one-line usage errors, --threads."""

from __future__ import annotations

import pkgutil

import pytest
import torch

from normlab import cli as commands
from normlab.cli.main import build_parser, main


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
