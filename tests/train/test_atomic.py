"""Atomic writes: the old file survives a failed write, no temporary file is left."""

from __future__ import annotations

import pytest

from normlab.train.atomic import write_atomic, write_bytes_atomic, write_text_atomic


def test_writes_and_replaces(tmp_path) -> None:
    path = tmp_path / "sub" / "file.txt"
    assert write_text_atomic(path, "one") == path
    write_bytes_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")

    def dies_half_way(handle) -> None:
        handle.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomic(path, dies_half_way)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_new_files_follow_the_umask(tmp_path) -> None:
    import os

    mask = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "report.html", "<html>")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
