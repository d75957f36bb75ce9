"""`normlab audit`: the report card of a module or file target, --json, --html, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from normlab.cli.audit import KIND_NAMES
from normlab.cli.main import main
from normlab.testing.auditing import CHECKS, KINDS

STUDENT = '''
import torch
from torch import nn

from normlab.bench.original import BatchNorm


def course_layer(num_features):
    """The course's layer, built like BatchNorm2d(num_features)."""
    return BatchNorm(num_features, num_dims=4)


class Refuses(nn.Module):
    def __init__(self, num_features):
        raise RuntimeError("not written yet")
'''


@pytest.fixture
def student(tmp_path: Path) -> Path:
    path = tmp_path / "student.py"
    path.write_text(STUDENT)
    return path


def test_the_help_names_every_kind() -> None:
    assert tuple(KINDS) == KIND_NAMES  # kept apart so that --help needs no torch


def test_a_passing_module_target_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "torch.nn:LayerNorm", "--kind", "layer"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "normlab audit: torch.nn:LayerNorm (layer) against torch.nn.LayerNorm(8)"
    assert len([line for line in lines if re.match(r" ?\d+  \w", line)]) == len(CHECKS)
    assert lines[-1].endswith(": PASS")


def test_the_course_layer_from_a_file_fails_with_its_pitfalls(
    student: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "card.html"
    target = f"{student}:course_layer"
    assert main(["audit", target, "--kind", "batch2d", "--html", str(page)]) == 1
    out = capsys.readouterr().out
    assert "12. state_dict with the twin, both ways: Register the running statistics" in out
    assert "14. memory flat over 300 steps: Update the running statistics under" in out
    assert out.splitlines()[-1] == str(page)
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "running variance is unbiased" in html


def test_json_and_extra_constructor_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "normlab.tutorial:BatchNorm", "--kind", "batch2d", "--kwarg", "num_dims=4"]
    assert main([*argv, "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["passed"] is True and card["twin"] == "BatchNorm2d(4)"
    statuses = {row["name"]: row["status"] for row in card["checks"]}
    assert statuses["running variance is unbiased"] == "passed"
    assert statuses["momentum=None (cumulative average)"] == "not applicable"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["torch.nn:BatchNorm2d", "--kind", "batch4d"], "unknown kind 'batch4d'; use one of"),
        (["no_such_module:Layer", "--kind", "layer"], "cannot import no_such_module: Module"),
        (["torch.nn:NoSuchNorm", "--kind", "layer"], "torch.nn has no 'NoSuchNorm'"),
        (["torch.nn", "--kind", "layer"], "expected package.module:Name or file.py:Name"),
        (["missing.py:Layer", "--kind", "layer"], "no file missing.py"),
        (["{student}:Refuses", "--kind", "batch2d"], "Refuses(4) raised RuntimeError: not writ"),
        (["torch.nn:LayerNorm", "--kind", "layer", "--kwarg", "eps"], "expected NAME=VALUE"),
        (["torch.nn:LayerNorm", "--kind", "layer", "--kwarg", "eps=x"], "a Python literal"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    argv: list[str], message: str, student: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{student}", str(student)) for a in argv]
    assert main(["audit", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("normlab audit: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_file_that_fails_to_import_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def layer(:\n")
    assert main(["audit", f"{broken}:layer", "--kind", "layer"]) == 2
    assert "cannot import" in capsys.readouterr().err
