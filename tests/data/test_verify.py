"""verify_dataset: per-file reports for good, corrupt and inconsistent files."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from normlab.data import (
    DataNotFoundError,
    DatasetSpec,
    load_dataset,
    sources,
    verify_dataset,
    write_idx,
)
from normlab.data.idx import idx_bytes


def test_good_files(make_data: Callable[..., DatasetSpec], tmp_path: Path) -> None:
    spec = make_data(tmp_path / "d")
    reports = verify_dataset(spec, tmp_path / "d")
    assert [r.role for r in reports] == [
        "train_images",
        "train_labels",
        "test_images",
        "test_labels",
    ]
    for report in reports:
        raw = gzip.decompress(report.path.read_bytes())
        assert report.ok and report.problem is None and report.checksum_checked
        assert report.size == len(raw)
        assert report.sha256 == hashlib.sha256(raw).hexdigest() == report.expected_sha256


def test_checksum_mismatch(make_data: Callable[..., DatasetSpec], tmp_path: Path) -> None:
    spec = make_data(tmp_path / "d")
    path = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    labels = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=8).copy()
    labels[0] = (labels[0] + 1) % 10  # still a valid label, same size: only sha256 can tell
    write_idx(path, labels)
    reports = {r.role: r for r in verify_dataset(spec, tmp_path / "d")}
    assert reports["train_images"].ok
    bad = reports["train_labels"]
    assert not bad.ok and bad.size == spec.file("train_labels").size
    assert bad.problem is not None and bad.problem.startswith(str(path))
    assert "sha256" in bad.problem and "does not match" in bad.problem


def test_structure_problems_are_reported(
    make_data: Callable[..., DatasetSpec], tmp_path: Path
) -> None:
    spec = make_data(tmp_path / "d", gz=False)
    images = tmp_path / "d" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])  # truncated
    labels = tmp_path / "d" / "train-labels-idx1-ubyte"
    write_idx(labels, np.full(60, 12, np.uint8))  # out of range
    reports = {r.role: r for r in verify_dataset(spec, tmp_path / "d")}
    assert "truncated" in reports["test_images"].problem
    assert "label 12 at index 0 is outside 0..9" in reports["train_labels"].problem
    assert reports["train_images"].ok and reports["test_labels"].ok


def test_count_mismatch_between_images_and_labels(
    make_data: Callable[..., DatasetSpec], tmp_path: Path
) -> None:
    spec = make_data(tmp_path / "d")
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    # a spec without counts, sizes or checksums: only the pair check can catch it
    loose = replace(
        spec,
        num_train=None,
        num_test=None,
        files=tuple(replace(f, size=None, sha256=None) for f in spec.files),
    )
    reports = {r.role: r for r in verify_dataset(loose, tmp_path / "d")}
    assert "20 images but" in reports["test_labels"].problem
    assert "has 19 labels" in reports["test_labels"].problem
    assert not reports["test_labels"].checksum_checked
    # with the spec's counts the file itself is flagged
    strict = {r.role: r for r in verify_dataset(spec, tmp_path / "d")}
    assert "19 entries, synthetic has 20" in strict["test_labels"].problem


def test_size_only_spec(make_data: Callable[..., DatasetSpec], tmp_path: Path) -> None:
    # MNIST-like: no recorded sha256, so size and structure decide
    spec = make_data(tmp_path / "d")
    no_sha = replace(spec, files=tuple(replace(f, sha256=None) for f in spec.files))
    reports = verify_dataset(no_sha, tmp_path / "d")
    assert all(r.ok and not r.checksum_checked for r in reports)
    wrong = replace(
        no_sha, files=tuple(replace(f, size=f.size + 1) for f in no_sha.files), num_train=None,
        num_test=None,
    )  # fmt: skip
    problems = [r.problem for r in verify_dataset(wrong, tmp_path / "d")]
    assert all(p and "bytes decompressed, expected" in p for p in problems)


def test_unreadable_file_is_reported(make_data: Callable[..., DatasetSpec], tmp_path: Path) -> None:
    spec = make_data(tmp_path / "d")
    (tmp_path / "d" / "train-images-idx3-ubyte.gz").write_bytes(idx_bytes(np.zeros(1, np.uint8)))
    report = verify_dataset(spec, tmp_path / "d")[0]
    assert not report.ok and report.size is None and "not a valid gzip file" in report.problem


def test_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="fashion-mnist not found"):
        verify_dataset("fashion-mnist", tmp_path)


def test_a_known_file_is_identified_by_its_checksum(
    make_data: Callable[..., DatasetSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files of the same sizes and structure (as Fashion-MNIST's are MNIST's) are told
    apart by a recorded checksum: asked as another dataset, each file is refused by name."""
    known = make_data(tmp_path / "d")  # the "synthetic" files, their sha256 recorded
    monkeypatch.setitem(sources.SPECS, known.name, known)
    other = replace(
        known, name="digits", files=tuple(replace(f, sha256=None) for f in known.files)
    )  # size and structure only, as MNIST's spec
    reports = verify_dataset(other, tmp_path / "d")
    assert not any(r.ok for r in reports)
    assert reports[0].problem == (
        f"{tmp_path / 'd' / 'train-images-idx3-ubyte.gz'} is synthetic's train images "
        "(identified by its sha256), not digits's train images; use --dataset synthetic, or "
        "point --data-dir to a folder holding digits's own files"
    )
    with pytest.raises(ValueError, match="is synthetic's train images"):
        load_dataset(other, tmp_path / "d")
    assert all(r.ok for r in verify_dataset(known, tmp_path / "d"))  # as itself: verified


@pytest.mark.skipif(
    not (Path("/usr/share/datasets/fashion-mnist") / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="needs Debian's Fashion-MNIST package",
)
def test_fashion_mnist_is_refused_as_mnist() -> None:
    with pytest.raises(ValueError, match=r"is fashion-mnist's train images .* not mnist's"):
        load_dataset("mnist", "/usr/share/datasets/fashion-mnist")
