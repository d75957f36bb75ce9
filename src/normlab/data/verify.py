"""Checking a dataset's files: IDX structure, exact size, sha256 of the decompressed bytes.

:func:`inspect_file` reads one file once and returns both the array and a
:class:`FileReport`; the loader and ``normlab data verify`` share it, so what loads is
exactly what verifies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normlab.data.discovery import Place, require_dataset, search
from normlab.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    check_images,
    check_labels,
    parse_idx,
    read_idx_bytes,
)
from normlab.data.sources import DatasetSpec, FileSpec, KnownFile, get_spec, identify


@dataclass(frozen=True)
class FileReport:
    """What verification found for one file."""

    role: str  # "train_images", ...
    path: Path
    size: int | None  # decompressed bytes; None when unreadable
    sha256: str | None  # of the decompressed bytes; None when unreadable or not computed
    ok: bool
    problem: str | None  # one line, None when ok
    expected_sha256: str | None = None  # None: the spec records no checksum (size+structure)

    @property
    def checksum_checked(self) -> bool:
        return self.ok and self.expected_sha256 is not None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _count(spec: DatasetSpec, role: str) -> int | None:
    return spec.num_train if role.startswith("train") else spec.num_test


def check_content(
    spec: DatasetSpec, file: FileSpec, path: Path, data: bytes, digest: str | None
) -> tuple[np.ndarray, str | None]:
    """Parse ``data`` and check it against ``file``; returns (array, problem or None).

    Raises:
        ValueError: the bytes are not a valid IDX file at all.
    """
    images = file.role.endswith("images")
    array = parse_idx(data, path, IMAGES_MAGIC if images else LABELS_MAGIC)
    if images:
        check_images(array, path, spec.image_size)
    else:
        check_labels(array, path, spec.num_classes)
    expected_n = _count(spec, file.role)
    if expected_n is not None and len(array) != expected_n:
        return array, f"{path}: {len(array)} entries, {spec.name} has {expected_n}"
    if file.size is not None and len(data) != file.size:
        return array, f"{path}: {len(data)} bytes decompressed, expected {file.size}"
    known = identify(digest) if digest is not None else None
    if known is not None and (known.dataset, known.role) != (spec.name, file.role):
        return array, _misidentified(spec, file, path, known)
    if file.sha256 is not None and digest is not None and digest != file.sha256:
        return array, (
            f"{path}: sha256 {digest[:16]}... does not match the expected "
            f"{file.sha256[:16]}... (corrupt or a different file; delete it and download again)"
        )
    return array, None


def _misidentified(spec: DatasetSpec, file: FileSpec, path: Path, known: KnownFile) -> str:
    def words(role: str) -> str:
        return role.replace("_", " ")

    if known.dataset == spec.name:
        way_out = f"give each file its own name ({file.stem} holds the {words(file.role)})"
    else:
        way_out = (
            f"use --dataset {known.dataset}, or point --data-dir to a folder holding "
            f"{spec.name}'s own files"
        )
    return (
        f"{path} is {known.dataset}'s {words(known.role)} (identified by its sha256), not "
        f"{spec.name}'s {words(file.role)}; {way_out}"
    )


def inspect_file(
    spec: DatasetSpec, file: FileSpec, path: Path, *, checksum: bool = True
) -> tuple[np.ndarray | None, FileReport]:
    """Read one file and verify it. Never raises for bad content: the report says what
    is wrong (OSError from reading is reported too)."""
    try:
        data = read_idx_bytes(path)
    except (OSError, ValueError) as error:
        return None, FileReport(file.role, path, None, None, False, str(error), file.sha256)
    digest = sha256_hex(data) if checksum else None
    try:
        array, problem = check_content(spec, file, path, data, digest)
    except ValueError as error:
        array, problem = None, str(error)
    report = FileReport(file.role, path, len(data), digest, problem is None, problem, file.sha256)
    return array, report


def pair_problem(
    images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path
) -> str | None:
    """A one-line problem when image and label counts disagree, else None."""
    if len(images) != len(labels):
        return f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels"
    return None


def verify_files(spec: DatasetSpec, files: dict[str, Path]) -> list[FileReport]:
    """Reports for the files found (role -> path), in the spec's order, with count checks."""
    arrays: dict[str, np.ndarray | None] = {}
    reports: dict[str, FileReport] = {}
    for file in spec.files:
        if file.role in files:
            arrays[file.role], reports[file.role] = inspect_file(spec, file, files[file.role])
    for split in ("train", "test"):
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None or labels is None:
            continue
        role = f"{split}_labels"
        problem = pair_problem(images, labels, files[f"{split}_images"], files[role])
        if problem and reports[role].ok:
            old = reports[role]
            reports[role] = FileReport(
                old.role, old.path, old.size, old.sha256, False, problem, old.expected_sha256
            )
    return [reports[file.role] for file in spec.files if file.role in reports]


def verify_dataset(
    name: str | DatasetSpec = "fashion-mnist", data_dir: str | Path | None = None
) -> list[FileReport]:
    """Find a dataset and verify each of its files (structure, size, sha256).

    Raises:
        DataNotFoundError: the dataset is in none of the places searched.
    """
    spec = get_spec(name)
    _, files = require_dataset(spec, data_dir)
    return verify_files(spec, files)


@dataclass(frozen=True)
class DatasetStatus:
    """Where a dataset was looked for, the first folder holding all its files, and how
    those files verify: what ``normlab data status`` and ``normlab info`` report."""

    spec: DatasetSpec
    places: list[Place]  # every folder searched, in order, with the files it holds
    found: Place | None  # the first complete one; None: not found
    reports: list[FileReport]  # its files, verified ([] when not found)

    @property
    def problems(self) -> list[str]:
        """One line per file that failed verification."""
        return [str(report.problem) for report in self.reports if not report.ok]

    @property
    def verified(self) -> bool | None:
        """True when every file verifies; None when the dataset was not found."""
        return None if self.found is None else not self.problems


def dataset_status(name: str | DatasetSpec, data_dir: str | Path | None = None) -> DatasetStatus:
    """Search for a dataset (:func:`~normlab.data.discovery.search`) and verify the first
    complete folder's files.

    Raises:
        DataLocationError: ``$NORMLAB_DATA`` is set to something that is not a folder.
    """
    spec = get_spec(name)
    places = search(spec, data_dir)
    found = next((place for place in places if place.complete(spec)), None)
    reports = verify_files(spec, found.files) if found is not None else []
    return DatasetStatus(spec, places, found, reports)
