"""Every ``normlab.*`` name the documentation quotes in code (``normlab.nn.BatchNorm2d``)
exists: a module, or an attribute reached from one. Prose rots as code moves; this keeps
the pages honest about where things are."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUOTED_NAME = re.compile(r"`(normlab(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def quoted_names() -> dict[str, list[str]]:
    """name -> the pages that quote it, for README.md and every page under docs/."""
    names: dict[str, list[str]] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        page = path.relative_to(ROOT).as_posix()
        for match in QUOTED_NAME.finditer(path.read_text(encoding="utf-8")):
            names.setdefault(match[1], [])
            if page not in names[match[1]]:
                names[match[1]].append(page)
    return names


def resolves(name: str) -> bool:
    """True if ``name`` is a module, or an attribute chain from the longest module."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for part in parts[split:]:
            if not hasattr(target, part):
                return False
            target = getattr(target, part)
        return True
    return False


NAMES = quoted_names()


@pytest.mark.parametrize("name", sorted(NAMES))
def test_a_quoted_name_exists(name: str) -> None:
    assert resolves(name), f"{name}, quoted by {', '.join(NAMES[name])}, does not exist"


def test_a_missing_name_is_caught() -> None:
    assert resolves("normlab.nn.BatchNorm2d")
    assert resolves("normlab.functional")
    assert not resolves("normlab.nn.NoSuchLayer")
    assert not resolves("normlab.no_such_module.x")
