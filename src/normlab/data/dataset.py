"""A dataset in memory: uint8 images and int64 labels as tensors, loaded once.

:func:`load_dataset` finds the files (see :mod:`normlab.data.discovery`), reads each
once, verifies it (IDX structure, size, sha256 of the decompressed bytes) and returns a
:class:`Dataset`; how long that takes is measured in ``docs/results/machine.md``.
:func:`synthetic_dataset` makes a small learnable stand-in for fast tests of the other
modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from normlab.data.discovery import DataNotFoundError, require_dataset
from normlab.data.idx import idx_bytes, write_idx
from normlab.data.sources import DatasetSpec, FileSpec, get_spec
from normlab.data.verify import inspect_file, pair_problem, sha256_hex
from normlab.errors import UsageError


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Train and test splits of an image-classification dataset, kept in memory.

    Images are uint8 (normalise per batch with :func:`normlab.data.normalize_images`);
    labels are int64 class indices into ``classes``.

    Shape:
        ``train_images``: ``(N_train, H, W)`` uint8, ``train_labels``: ``(N_train,)``
        int64; the same for test.
    """

    name: str  # "fashion-mnist", "mnist" or "synthetic"
    train_images: torch.Tensor  # uint8 (60000, 28, 28)
    train_labels: torch.Tensor  # int64 (60000,)
    test_images: torch.Tensor  # uint8 (10000, 28, 28)
    test_labels: torch.Tensor  # int64 (10000,)
    classes: tuple[str, ...]  # class names, index = label
    source: Path  # folder the files came from

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, train: int | None = None, test: int | None = None) -> Dataset:
        """The first ``train`` training and ``test`` test examples (None: all). Views,
        no copy."""
        for what, n, have in (("train", train, len(self.train_images)),
                              ("test", test, len(self.test_images))):  # fmt: skip
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise UsageError(f"subset {what} must be a positive integer, got {n!r}")
            if n is not None and n > have:
                raise UsageError(f"subset {what}={n} is more than the {have} examples there")
        return replace(
            self,
            train_images=self.train_images[:train],
            train_labels=self.train_labels[:train],
            test_images=self.test_images[:test],
            test_labels=self.test_labels[:test],
        )

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.train_images.shape)}, "
            f"test={tuple(self.test_images.shape)}, classes={len(self.classes)}, "
            f"source={str(self.source)!r})"
        )


def _tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    # np.frombuffer views are read-only; one copy gives torch a writable, owned buffer.
    return torch.from_numpy(np.array(array, copy=True)).to(dtype)


def load_dataset(
    name: str | DatasetSpec = "fashion-mnist",
    data_dir: str | Path | None = None,
    download: bool = False,
    *,
    verify: bool = True,
    progress: bool = True,
) -> Dataset:
    """Find, read and verify a dataset; download it first when asked and it is missing.

    Args:
        name: ``"fashion-mnist"`` (default), ``"mnist"`` or a :class:`DatasetSpec`.
        data_dir: search only this folder (and ``<data_dir>/<name>``, torchvision's
            ``<data_dir>/FashionMNIST/raw``); default: the discovery order.
        download: when not found, download into ``data_dir`` (or the user cache).
        verify: check sha256 checksums (structure and sizes are always checked).

    Raises:
        DataNotFoundError: not found and ``download`` is False (the message says how to
            get it); ValueError: a file is corrupt (the message names it).

    Example:
        >>> data = load_dataset("fashion-mnist")
        >>> data.train_images.shape, data.classes[0]
        (torch.Size([60000, 28, 28]), 'T-shirt/top')
    """
    spec = get_spec(name)
    try:
        folder, files = require_dataset(spec, data_dir)
    except DataNotFoundError:
        if not download:
            raise
        from normlab.data.download import download_dataset

        download_dataset(spec, dest=data_dir, progress=progress)
        folder, files = require_dataset(spec, data_dir)
    arrays: dict[str, np.ndarray] = {}
    for file in spec.files:
        array, report = inspect_file(spec, file, files[file.role], checksum=verify)
        if not report.ok or array is None:
            raise ValueError(report.problem)
        arrays[file.role] = array
    for split in ("train", "test"):
        images, labels = f"{split}_images", f"{split}_labels"
        problem = pair_problem(arrays[images], arrays[labels], files[images], files[labels])
        if problem:
            raise ValueError(problem)
    return Dataset(
        name=spec.name,
        train_images=_tensor(arrays["train_images"], torch.uint8),
        train_labels=_tensor(arrays["train_labels"], torch.int64),
        test_images=_tensor(arrays["test_images"], torch.uint8),
        test_labels=_tensor(arrays["test_labels"], torch.int64),
        classes=spec.classes,
        source=folder,
    )


def synthetic_dataset(
    num_train: int = 1000,
    num_test: int = 200,
    seed: int = 0,
    *,
    num_classes: int = 10,
    image_size: int = 28,
) -> Dataset:
    """A small learnable stand-in for Fashion-MNIST: class ``c`` is a bright blob at its
    own spot on a circle, jittered by up to 2 px, with amplitude 150..255 over uniform
    background noise 0..50. Classes are balanced (``i % num_classes``, then shuffled).

    Formula: ``u = noise + a * exp(-|p - centre_c - jitter|^2 / (2 * 2.5^2))``, clipped
    to 0..255, with ``centre_c = s/2 + 0.3 s (sin, cos)(2 pi c / num_classes)``.

    Shape:
        images ``(num_train, s, s)`` uint8, labels ``(num_train,)`` int64 (same for test).
    """
    for what, n in (("num_train", num_train), ("num_test", num_test)):
        if not isinstance(n, int) or n < 1:
            raise UsageError(f"{what} must be a positive integer, got {n!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UsageError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not isinstance(image_size, int) or image_size < 8:
        raise UsageError(f"image_size must be an integer >= 8, got {image_size!r}")
    generator = torch.Generator().manual_seed(seed)
    angles = 2 * math.pi * torch.arange(num_classes, dtype=torch.float64) / num_classes
    centres = image_size / 2 + 0.3 * image_size * torch.stack([angles.sin(), angles.cos()], 1)
    grid = torch.arange(image_size, dtype=torch.float64)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
        centre = centres[labels] + (torch.rand(n, 2, generator=generator, dtype=torch.float64)
                                    * 4 - 2)  # fmt: skip
        dy = grid.view(1, -1, 1) - centre[:, 0].view(-1, 1, 1)
        dx = grid.view(1, 1, -1) - centre[:, 1].view(-1, 1, 1)
        amplitude = 150 + 105 * torch.rand(n, 1, 1, generator=generator, dtype=torch.float64)
        blob = amplitude * torch.exp(-(dx**2 + dy**2) / (2 * 2.5**2))
        noise = 50 * torch.rand(n, image_size, image_size, generator=generator,
                                dtype=torch.float64)  # fmt: skip
        images = (blob + noise).clamp(0, 255).round().to(torch.uint8)
        return images, labels.to(torch.int64)

    train_images, train_labels = split(num_train)
    test_images, test_labels = split(num_test)
    return Dataset(
        name="synthetic",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=tuple(f"blob {c}" for c in range(num_classes)),
        source=Path("<synthetic>"),
    )


def write_dataset(dataset: Dataset, folder: str | Path, *, gz: bool = True) -> DatasetSpec:
    """Save ``dataset`` as the four MNIST-named IDX files in ``folder`` and return the
    :class:`DatasetSpec` that loads and verifies them (sizes, sha256, counts).

    For tests and exports: ``load_dataset(write_dataset(data, tmp), tmp)`` gives back
    the same tensors (labels must be in ``0..len(classes)-1``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "train_images": dataset.train_images,
        "train_labels": dataset.train_labels,
        "test_images": dataset.test_images,
        "test_labels": dataset.test_labels,
    }
    template = get_spec("fashion-mnist").files
    files = []
    for file in template:
        values = tensors[file.role].detach().cpu()
        if values.numel() and (int(values.min()) < 0 or int(values.max()) > 255):
            raise ValueError(f"{file.role} has values outside 0..255; IDX uint8 cannot hold them")
        array = values.numpy().astype(np.uint8)
        data = idx_bytes(array)
        write_idx(folder / (file.stem + (".gz" if gz else "")), array)
        files.append(FileSpec(file.role, file.stem, len(data), sha256_hex(data)))
    return DatasetSpec(
        name=dataset.name,
        classes=dataset.classes,
        files=tuple(files),
        image_size=tuple(dataset.train_images.shape[1:3]),
        num_train=len(dataset.train_images),
        num_test=len(dataset.test_images),
    )
