"""Fixtures for the data tests: an isolated discovery environment and tiny IDX datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from normlab.data import Dataset, DatasetSpec, discovery, synthetic_dataset, write_dataset


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No discovery place of the real machine is visible: env, HOME, cwd, Debian root."""
    monkeypatch.delenv("NORMLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(discovery, "DEBIAN_ROOT", tmp_path / "debian")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


@pytest.fixture
def tiny() -> Dataset:
    """60 train and 20 test 28x28 images, balanced labels 0..9."""
    return synthetic_dataset(num_train=60, num_test=20, seed=3)


@pytest.fixture
def make_data(tiny: Dataset) -> Callable[..., DatasetSpec]:
    """Write ``tiny`` as IDX files into a folder; returns the spec that verifies them."""

    def make(folder: Path, *, gz: bool = True) -> DatasetSpec:
        return write_dataset(tiny, folder, gz=gz)

    return make
