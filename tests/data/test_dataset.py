"""load_dataset, Dataset, synthetic_dataset, write_dataset, and the real Fashion-MNIST."""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from normlab.data import (
    DataNotFoundError,
    Dataset,
    DatasetSpec,
    load_dataset,
    synthetic_dataset,
    verify_dataset,
    write_idx,
)
from normlab.errors import UsageError

REAL = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("gz", [True, False])
def test_load_round_trip(
    tiny: Dataset, make_data: Callable[..., DatasetSpec], tmp_path: Path, gz: bool
) -> None:
    spec = make_data(tmp_path / "d", gz=gz)
    data = load_dataset(spec, tmp_path / "d")
    assert data.name == "synthetic" and data.source == tmp_path / "d"
    assert data.classes == tiny.classes
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        got, want = getattr(data, field), getattr(tiny, field)
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    # the tensors own writable memory (not a read-only view of the file bytes)
    data.train_images[0, 0, 0] = 7


def test_load_rejects_corrupt_file(make_data: Callable[..., DatasetSpec], tmp_path: Path) -> None:
    spec = make_data(tmp_path / "d")
    path = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    images = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=16)
    images = images.reshape(60, 28, 28).copy()
    images[5, 5, 5] ^= 1
    write_idx(path, images)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: sha256 .* does not match"):
        load_dataset(spec, tmp_path / "d")
    data = load_dataset(spec, tmp_path / "d", verify=False)  # structure still checked
    assert data.train_images[5, 5, 5] == images[5, 5, 5]


def test_load_missing_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="normlab data download --dataset fashion-mnist"):
        load_dataset("fashion-mnist")


def test_subset(tiny: Dataset) -> None:
    small = tiny.subset(train=10, test=5)
    assert torch.equal(small.train_images, tiny.train_images[:10])
    assert torch.equal(small.test_labels, tiny.test_labels[:5])
    assert len(small.test_images) == 5 and small.classes == tiny.classes
    assert len(tiny.subset(train=7).test_images) == len(tiny.test_images)
    with pytest.raises(UsageError, match="subset train=61 is more than the 60"):
        tiny.subset(train=61)
    with pytest.raises(UsageError, match="subset test must be a positive integer"):
        tiny.subset(test=0)


def test_dataset_is_frozen_and_repr_is_short(tiny: Dataset) -> None:
    with pytest.raises(AttributeError):
        tiny.name = "x"  # type: ignore[misc]
    assert repr(tiny) == (
        "Dataset('synthetic', train=(60, 28, 28), test=(20, 28, 28), classes=10, "
        "source='<synthetic>')"
    )


def test_synthetic_is_balanced_deterministic_and_learnable() -> None:
    data = synthetic_dataset(num_train=500, num_test=200, seed=1)
    assert data.train_images.shape == (500, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.train_labels.bincount().tolist() == [50] * 10
    again = synthetic_dataset(num_train=500, num_test=200, seed=1)
    assert torch.equal(data.train_images, again.train_images)
    assert not torch.equal(data.train_images, synthetic_dataset(500, 200, seed=2).train_images)
    # nearest class mean (of the training images) classifies the test set almost perfectly
    x = data.train_images.flatten(1).double()
    means = torch.stack([x[data.train_labels == c].mean(0) for c in range(10)])
    test = data.test_images.flatten(1).double()
    predicted = torch.cdist(test, means).argmin(1)
    assert (predicted == data.test_labels).double().mean() > 0.9


def test_synthetic_rejects_bad_sizes() -> None:
    with pytest.raises(UsageError, match="num_train must be a positive integer"):
        synthetic_dataset(num_train=0)


@pytest.fixture(scope="module")
def real() -> Dataset:
    if not (REAL / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(
            f"Fashion-MNIST not installed in {REAL} (apt-get install dataset-fashion-mnist)"
        )
    return load_dataset("fashion-mnist", REAL)


def test_real_fashion_mnist(real: Dataset) -> None:
    assert real.train_images.shape == (60000, 28, 28) and real.train_images.dtype == torch.uint8
    assert real.test_images.shape == (10000, 28, 28)
    assert real.train_labels.dtype == torch.int64
    assert real.train_labels.bincount().tolist() == [6000] * 10
    assert real.test_labels.bincount().tolist() == [1000] * 10
    assert real.classes[0] == "T-shirt/top" and real.classes[9] == "Ankle boot"
    # the dataset's documented pixel range and a non-trivial image
    assert int(real.train_images.min()) == 0 and int(real.train_images.max()) == 255
    assert 0 < real.train_images.double().mean() / 255 < 0.5
    reports = verify_dataset("fashion-mnist", REAL)
    assert all(r.ok and r.checksum_checked for r in reports)
    assert (
        sum(r.size for r in reports) == 16 + 60000 * 784 + 8 + 60000 + 16 + 10000 * 784 + 8 + 10000
    )
    assert math.isclose(real.subset(train=600).train_labels.double().mean(), 4.5, abs_tol=0.5)
