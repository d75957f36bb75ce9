"""`normlab data status|download|verify`: output, messages and exit codes.

The real Fashion-MNIST spec is swapped for one describing a tiny generated dataset
(same file names, its own sizes and checksums), so these tests run anywhere, fast.
"""

from __future__ import annotations

import functools
import gzip
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from normlab.cli.data import DATASET_NAMES
from normlab.cli.main import main
from normlab.data import (
    DATASETS,
    DatasetSpec,
    discovery,
    sources,
    synthetic_dataset,
    write_dataset,
    write_idx,
)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("NORMLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(discovery, "DEBIAN_ROOT", tmp_path / "debian")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DatasetSpec:
    """Tiny data in tmp/data-dir, described by the spec `fashion-mnist` now resolves to."""
    built = write_dataset(synthetic_dataset(40, 10, seed=4), tmp_path / "data-dir")
    tiny = replace(
        built,
        name="fashion-mnist",
        classes=sources.FASHION_MNIST.classes,
        base_url=None,
        torchvision_dir="FashionMNIST",
    )
    monkeypatch.setitem(sources.SPECS, "fashion-mnist", tiny)
    return tiny


def _corrupt_labels(folder: Path) -> Path:
    path = folder / "train-labels-idx1-ubyte.gz"
    labels = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=8).copy()
    labels[0] = (labels[0] + 1) % 10
    write_idx(path, labels)
    return path


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on 127.0.0.1 serving tmp/served."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


def test_dataset_names_match_the_library() -> None:
    assert DATASET_NAMES == DATASETS


def test_status_found_and_verified(
    spec: DatasetSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "status", "--dataset", "fashion-mnist", "--data-dir", "data-dir"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist: data-dir (--data-dir), verified" in out
    assert "train-images-idx3-ubyte.gz" in out and "sha256 ok" in out


def test_status_not_found(spec: DatasetSpec, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "status"]) == 0  # informational: missing data is not an error
    out = capsys.readouterr().out
    assert "fashion-mnist: not found; get it with `make data`" in out
    assert "mnist: not found; get it with `normlab data download --dataset mnist`" in out
    assert "(Debian package): -" in out and "(user cache): -" in out


def test_status_corrupt(
    spec: DatasetSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _corrupt_labels(tmp_path / "data-dir")
    (tmp_path / "debian").mkdir()
    (tmp_path / "data-dir").rename(tmp_path / "debian" / "fashion-mnist")
    assert main(["data", "status", "--dataset", "fashion-mnist"]) == 1
    out = capsys.readouterr().out
    assert "(Debian package), 1 file(s) FAILED verification" in out
    assert "problem: " in out and "does not match" in out


def test_verify_ok(spec: DatasetSpec, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "verify", "--data-dir", "data-dir"]) == 0
    out = capsys.readouterr().out
    assert out.count("sha256 ok") == 4


def test_verify_corrupt_exits_1(
    spec: DatasetSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _corrupt_labels(tmp_path / "data-dir")
    assert main(["data", "verify", "--data-dir", "data-dir"]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"normlab data verify: {path.relative_to(tmp_path)}: sha256 ")
    assert "does not match" in line


def test_verify_missing_dir_exits_2(spec: DatasetSpec, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "verify", "--data-dir", "nope"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("normlab data: error: --data-dir nope is not a folder;")
    assert "make data" in line and "normlab data download" in line and "NORMLAB_DATA" in line


def test_verify_missing_data_exits_2(
    spec: DatasetSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["data", "verify", "--data-dir", "empty"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("normlab data: error: fashion-mnist not found: looked in empty")
    assert "normlab data download --dataset fashion-mnist" in line


def test_verify_truncated_file_exits_1(
    spec: DatasetSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "data-dir" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    assert main(["data", "verify", "--data-dir", "data-dir"]) == 1
    assert "gzip data is truncated" in capsys.readouterr().err


def test_download_then_verify(
    spec: DatasetSpec,
    http_folder: tuple[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, served = http_folder
    for path in (tmp_path / "data-dir").iterdir():
        path.rename(served / path.name)
    argv = ["data", "download", "--base-url", url, "--no-progress"]
    assert main(argv) == 0
    cache = tmp_path / "home" / ".cache" / "normlab" / "fashion-mnist"
    assert f"fashion-mnist: downloaded and verified in {cache}" in capsys.readouterr().out
    assert main(["data", "verify"]) == 0  # found in the cache by discovery
    assert f"fashion-mnist: {cache}" in capsys.readouterr().out
    assert main([*argv, "--dest", "elsewhere"]) == 0
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == sorted(
        p.name for p in served.iterdir()
    )


def test_download_corrupt_exits_1(
    spec: DatasetSpec,
    http_folder: tuple[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, served = http_folder
    _corrupt_labels(tmp_path / "data-dir")
    for path in (tmp_path / "data-dir").iterdir():
        path.rename(served / path.name)
    assert main(["data", "download", "--base-url", url, "--dest", "d", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "normlab data download: downloaded d/train-labels-idx1-ubyte.gz: sha256" in err
    assert not (tmp_path / "d" / "train-labels-idx1-ubyte.gz").exists()


def test_download_missing_file_exits_2(
    spec: DatasetSpec, http_folder: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = http_folder  # serves an empty folder
    assert main(["data", "download", "--base-url", url, "--dest", "d", "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("normlab data: error: http://127.0.0.1:")
    assert "train-images-idx3-ubyte.gz: HTTP 404" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data"], "the following arguments are required: ACTION"),
        (["data", "verify", "--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["data", "download", "--retries", "x"], "invalid int value: 'x'"),
    ],
)
def test_bad_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_retries_value(spec: DatasetSpec, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "download", "--retries", "0", "--base-url", "http://127.0.0.1:9"]) == 2
    assert "retries must be >= 1, got 0" in capsys.readouterr().err
