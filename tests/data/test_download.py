"""Downloads for real, over HTTP from a local server on 127.0.0.1 that can misbehave:
cut a transfer short, stall, fail with 404/500, or serve corrupt bytes."""

from __future__ import annotations

import gzip
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from normlab.data import (
    CorruptDownloadError,
    Dataset,
    DatasetSpec,
    DownloadError,
    download_dataset,
    load_dataset,
    verify_dataset,
)
from normlab.data.discovery import locate_files
from normlab.data.idx import idx_bytes

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"


class Server:
    """Serves ``files`` by name; ``faults[name]`` lists what to do on successive requests
    ("cut", "cut-nolength", "stall", "404", "500"), then it serves normally."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.faults: dict[str, list[str]] = {}
        self.requests: list[str] = []
        self.half_sent = threading.Event()
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                owner.requests.append(name)
                queue = owner.faults.get(name, [])
                fault = queue.pop(0) if queue else "ok"
                body = owner.files.get(name)
                if body is None or fault == "404":
                    self.send_error(404, "Not Found")
                    return
                if fault == "500":
                    self.send_error(500, "Internal Server Error")
                    return
                self.send_response(200)
                if fault != "cut-nolength":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "ok":
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: len(body) // 2])  # then the connection dies
                self.wfile.flush()
                if fault == "stall":
                    owner.half_sent.set()
                    owner.release.wait(60)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(
    make_data: Callable[..., DatasetSpec], tmp_path: Path
) -> Iterator[tuple[Server, DatasetSpec]]:
    spec = make_data(tmp_path / "origin")
    files = {path.name: path.read_bytes() for path in (tmp_path / "origin").iterdir()}
    server = Server(files)
    yield server, spec
    server.close()


def _download(server: Server, spec: DatasetSpec, dest: Path, **kwargs) -> Path:
    kwargs = {"progress": False, "backoff": 0.0, "timeout": 10.0, **kwargs}
    return download_dataset(spec, dest, base_url=server.url, **kwargs)


def _leftovers(dest: Path) -> list[str]:
    return sorted(path.name for path in dest.iterdir()) if dest.exists() else []


def test_success(served: tuple[Server, DatasetSpec], tiny: Dataset, tmp_path: Path) -> None:
    server, spec = served
    dest = _download(server, spec, tmp_path / "dest")
    assert sorted(server.requests) == sorted(server.files)
    assert _leftovers(dest) == sorted(server.files)  # no temp files left
    data = load_dataset(spec, dest)
    assert torch.equal(data.train_images, tiny.train_images)
    assert torch.equal(data.test_labels, tiny.test_labels)
    assert all(report.ok and report.checksum_checked for report in verify_dataset(spec, dest))
    # a second download finds everything verified and asks for nothing
    _download(server, spec, dest)
    assert len(server.requests) == 4


def test_progress_bar(
    served: tuple[Server, DatasetSpec], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, spec = served
    _download(server, spec, tmp_path / "dest", progress=True)
    assert TRAIN_IMAGES in capsys.readouterr().err


def test_corrupt_file_is_rejected_and_not_kept(
    served: tuple[Server, DatasetSpec], tmp_path: Path
) -> None:
    server, spec = served
    labels = np.frombuffer(gzip.decompress(server.files[TRAIN_LABELS]), np.uint8, offset=8)
    flipped = labels.copy()
    flipped[3] = (flipped[3] + 1) % 10  # valid structure, wrong content
    server.files[TRAIN_LABELS] = gzip.compress(idx_bytes(flipped))
    dest = tmp_path / "dest"
    with pytest.raises(CorruptDownloadError, match=rf"{TRAIN_LABELS}: sha256 .* does not match"):
        _download(server, spec, dest)
    assert server.requests.count(TRAIN_LABELS) == 1  # the same URL gives the same bytes
    assert "train_labels" not in locate_files(spec, dest)
    assert not [name for name in _leftovers(dest) if name.endswith(".part")]


def test_cut_once_is_retried(served: tuple[Server, DatasetSpec], tmp_path: Path) -> None:
    server, spec = served
    server.faults[TRAIN_IMAGES] = ["cut"]
    server.faults[TRAIN_LABELS] = ["cut-nolength", "500"]  # truncated gzip, then a 500
    dest = _download(server, spec, tmp_path / "dest")
    assert server.requests.count(TRAIN_IMAGES) == 2
    assert server.requests.count(TRAIN_LABELS) == 3
    assert all(report.ok for report in verify_dataset(spec, dest))
    assert _leftovers(dest) == sorted(server.files)


def test_cut_always_fails_and_leaves_nothing(
    served: tuple[Server, DatasetSpec], tmp_path: Path
) -> None:
    server, spec = served
    server.faults[TRAIN_IMAGES] = ["cut"] * 3
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match=r"failed after 3 attempts: connection closed after"):
        _download(server, spec, dest)
    assert server.requests.count(TRAIN_IMAGES) == 3
    assert _leftovers(dest) == []


def test_404_is_not_retried(served: tuple[Server, DatasetSpec], tmp_path: Path) -> None:
    server, spec = served
    del server.files[TRAIN_IMAGES]
    with pytest.raises(DownloadError, match=rf"{TRAIN_IMAGES}: HTTP 404"):
        _download(server, spec, tmp_path / "dest")
    assert server.requests == [TRAIN_IMAGES]


def test_unreachable_server(make_data: Callable[..., DatasetSpec], tmp_path: Path) -> None:
    spec = make_data(tmp_path / "origin")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match=r"failed after 2 attempts: URLError"):
        download_dataset(
            spec, tmp_path / "dest", f"http://127.0.0.1:{port}", retries=2, progress=False,
            backoff=0.0,
        )  # fmt: skip


def test_existing_good_file_kept_bad_file_moved_aside(
    served: tuple[Server, DatasetSpec], tmp_path: Path
) -> None:
    server, spec = served
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / TRAIN_IMAGES).write_bytes(server.files[TRAIN_IMAGES])
    (dest / TRAIN_LABELS).write_bytes(gzip.compress(idx_bytes(np.zeros(60, np.uint8))))
    _download(server, spec, dest)
    assert TRAIN_IMAGES not in server.requests and TRAIN_LABELS in server.requests
    assert (dest / f"{TRAIN_LABELS}.bad").exists()
    assert all(report.ok for report in verify_dataset(spec, dest))


def test_bad_retries(served: tuple[Server, DatasetSpec], tmp_path: Path) -> None:
    server, spec = served
    with pytest.raises(ValueError, match="retries must be >= 1, got 0"):
        _download(server, spec, tmp_path / "dest", retries=0)


def test_killed_download_leaves_no_file_that_passes(
    served: tuple[Server, DatasetSpec], tmp_path: Path
) -> None:
    """SIGKILL a download in the middle of a file: nothing with a dataset file name is
    left, only a hidden .part; the next download cleans it up and succeeds."""
    server, spec = served
    server.faults[TRAIN_IMAGES] = ["stall"]
    dest = tmp_path / "dest"
    (tmp_path / "spec.pickle").write_bytes(pickle.dumps(spec))
    code = (
        "import pickle, sys; from normlab.data import download_dataset; "
        "spec = pickle.load(open(sys.argv[1], 'rb')); "
        "download_dataset(spec, sys.argv[2], sys.argv[3], progress=False, backoff=0.0)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "spec.pickle"), str(dest), server.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert server.half_sent.wait(60), child.stderr.read() if child.poll() is not None else ""
        assert locate_files(spec, dest) == {}
        assert [n for n in _leftovers(dest) if n.startswith(f".{TRAIN_IMAGES}.")]
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    server.release.set()
    leftovers = _leftovers(dest)
    assert locate_files(spec, dest) == {}
    assert leftovers and all(name.endswith(".part") for name in leftovers)
    _download(server, spec, dest)
    assert _leftovers(dest) == sorted(server.files)
    assert all(report.ok for report in verify_dataset(spec, dest))
