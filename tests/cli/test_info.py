"""`normlab info`: the facts it reports match their sources, as a table and as JSON."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from normlab import __version__
from normlab.cli.info import format_table, gather, rows
from normlab.cli.main import main
from normlab.data import (
    DatasetSpec,
    discovery,
    sources,
    synthetic_dataset,
    write_dataset,
    write_idx,
)
from normlab.kernels.cpu import build


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No dataset is found anywhere unless a test puts one in place."""
    monkeypatch.delenv("NORMLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(discovery, "DEBIAN_ROOT", tmp_path / "debian")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny generated dataset in tmp/data-dir, which `fashion-mnist` now describes."""
    folder = tmp_path / "data-dir"
    built = write_dataset(synthetic_dataset(40, 10, seed=4), folder)
    tiny: DatasetSpec = replace(
        built, name="fashion-mnist", classes=sources.FASHION_MNIST.classes, base_url=None,
        torchvision_dir="FashionMNIST",
    )
    monkeypatch.setitem(sources.SPECS, "fashion-mnist", tiny)
    return folder


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["info", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_versions_and_cpu_facts(capsys: pytest.CaptureFixture[str]) -> None:
    facts = _json(capsys)
    assert facts["normlab"] == __version__
    assert facts["torch"] == torch.__version__
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["threads"] == torch.get_num_threads()
    kernels = facts["kernels"]
    assert kernels["library"] == str(build.LIBRARY)
    assert kernels["built"] == build.LIBRARY.is_file()
    assert kernels["cuda"] == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert kernels["cuda_path"] == "no CUDA device" and kernels["gpu"] is None


def test_threads_follow_the_global_flag(capsys: pytest.CaptureFixture[str]) -> None:
    before = torch.get_num_threads()
    try:
        assert main(["--threads", "2", "info", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["threads"] == 2
    finally:
        torch.set_num_threads(before)


def _info_in_subprocess(tmp_path: Path, kernels: str) -> dict:
    env = {**os.environ, "NORMLAB_KERNELS": kernels, "HOME": str(tmp_path / "home")}
    env.pop("NORMLAB_DATA", None)
    result = subprocess.run(
        [sys.executable, "-m", "normlab.cli.main", "info", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["kernels"]


def test_kernels_off_by_environment(tmp_path: Path) -> None:
    kernels = _info_in_subprocess(tmp_path, "0")
    assert kernels["enabled"] is False and kernels["loaded"] is False
    assert kernels["cpu_path"] == "tensor code (NORMLAB_KERNELS=0)"


@pytest.mark.skipif(
    not build.LIBRARY.is_file() or build.is_stale(), reason="CPU kernels not built"
)
def test_kernels_on_when_built(tmp_path: Path) -> None:
    kernels = _info_in_subprocess(tmp_path, "1")
    assert kernels["enabled"] is True and kernels["loaded"] is True
    assert kernels["cpu_path"] == "C++ kernels"


def test_data_found_and_verified(
    tiny_fashion: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datasets = {d["name"]: d for d in _json(capsys, "--data-dir", str(tiny_fashion))["datasets"]}
    assert datasets["fashion-mnist"]["folder"] == str(tiny_fashion)
    assert datasets["fashion-mnist"]["origin"] == "--data-dir"
    assert datasets["fashion-mnist"]["verified"] is True
    assert datasets["fashion-mnist"]["problems"] == []
    # MNIST's files have the same names: found there too, but not MNIST's sizes or checksums
    assert datasets["mnist"]["folder"] == str(tiny_fashion)
    assert datasets["mnist"]["verified"] is False and len(datasets["mnist"]["problems"]) == 4


def test_data_not_found(capsys: pytest.CaptureFixture[str]) -> None:
    for dataset in _json(capsys)["datasets"]:
        assert dataset["folder"] is None and dataset["verified"] is None
        assert dataset["problems"] == []


def test_data_found_through_environment(
    tiny_fashion: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMLAB_DATA", str(tiny_fashion))
    dataset = gather().datasets[0]
    assert (dataset.name, dataset.folder) == ("fashion-mnist", str(tiny_fashion))
    assert dataset.origin == "$NORMLAB_DATA" and dataset.verified is True


def test_corrupt_data_is_reported(
    tiny_fashion: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tiny_fashion / "train-labels-idx1-ubyte.gz"
    labels = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=8).copy()
    labels[0] = (labels[0] + 1) % 10
    write_idx(path, labels)
    assert main(["info", "--data-dir", str(tiny_fashion)]) == 0  # a fact, not a failure
    out = capsys.readouterr().out
    assert f"{tiny_fashion} (--data-dir), 1 file(s) FAILED" in out
    assert "train-labels-idx1-ubyte.gz: sha256" in out


def test_bad_environment_folder_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path / "missing"))
    dataset = gather().datasets[0]
    assert dataset.folder is None and "NORMLAB_DATA=" in dataset.problems[0]


def test_table_is_aligned(tiny_fashion: Path) -> None:
    info = gather(tiny_fashion)
    lines = format_table(info).splitlines()
    pairs = rows(info)
    width = max(len(label) for label, _ in pairs)
    assert len(lines) == len(pairs)
    for line, (label, value) in zip(lines, pairs, strict=True):
        assert line[:width].rstrip() == label and line[width : width + 2] == "  "
        assert line[width + 2 :] == value
    assert ("torch", torch.__version__) in pairs
    assert ("data fashion-mnist", f"{tiny_fashion} (--data-dir), verified") in pairs


def test_missing_data_dir_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--data-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a folder" in err
