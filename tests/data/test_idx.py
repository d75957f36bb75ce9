"""The IDX reader and writer: round trips and every validation error."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from normlab.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    check_images,
    check_labels,
    idx_bytes,
    parse_idx,
    read_idx,
    write_idx,
)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / f"x-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_header_layout_is_the_mnist_one() -> None:
    # Hand-built expectation from the IDX spec: magic 0x00000803, then big-endian dims.
    images = np.zeros((2, 28, 28), np.uint8)
    data = idx_bytes(images)
    assert data[:16] == bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28)
    assert len(data) == 16 + 2 * 784
    labels = idx_bytes(np.array([7, 1], np.uint8))
    assert labels == bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 1])
    # multi-byte values are big-endian on disk
    assert idx_bytes(np.array([1], np.int32))[-4:] == b"\x00\x00\x00\x01"


def test_gz_is_real_gzip(tmp_path: Path) -> None:
    path = tmp_path / "l.gz"
    write_idx(path, np.array([1, 2, 3], np.uint8))
    assert gzip.decompress(path.read_bytes()) == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])


def test_torch_tensor_is_accepted(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    write_idx(tmp_path / "t", torch.tensor([4, 5], dtype=torch.uint8))
    np.testing.assert_array_equal(read_idx(tmp_path / "t"), [4, 5])


def _bad(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        parse_idx(data, "some/file-idx3-ubyte")
    message = str(info.value)
    assert message.startswith("some/file-idx3-ubyte: ") and "\n" not in message


def test_too_short() -> None:
    _bad(b"\x00\x00", "too short")


def test_bad_magic_nonzero_prefix() -> None:
    _bad(b"\x12\x34\x08\x01" + b"\x00" * 8, r"bad IDX magic number 0x12340801")


def test_unknown_type_code() -> None:
    _bad(b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", r"unknown IDX type code 0x07")


def test_zero_dimensions() -> None:
    _bad(b"\x00\x00\x08\x00", "0 dimensions")


def test_truncated_header() -> None:
    _bad(b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header")


def test_truncated_body() -> None:
    data = idx_bytes(np.zeros((3, 2, 2), np.uint8))
    _bad(data[:-1], r"truncated: 27 bytes, the header \(3, 2, 2\) says 28")


def test_labels_file_holding_images_names_the_wrong_magic() -> None:
    """The images' header on a labels file: named by its magic, before any size check."""
    images = idx_bytes(np.zeros((3, 2, 2), np.uint8))
    labels_size = len(idx_bytes(np.zeros((3,), np.uint8)))
    for data in (images, images[:labels_size]):
        with pytest.raises(
            ValueError,
            match=r"magic number 0x00000803 \(the magic of images\) "
            r"where labels need 0x00000801",
        ):
            parse_idx(data, "labels", LABELS_MAGIC)
    assert parse_idx(images, "images", IMAGES_MAGIC).shape == (3, 2, 2)


def test_trailing_bytes() -> None:
    data = idx_bytes(np.zeros((3,), np.uint8))
    _bad(data + b"\x00", "has trailing bytes: 12 bytes")


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    write_idx(path, np.arange(5000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"x.gz: gzip data is truncated"):
        read_idx(path)


def test_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match=r"x.gz: not a valid gzip file"):
        read_idx(path)


def test_multi_member_gzip(tmp_path: Path) -> None:
    data = idx_bytes(np.arange(10, dtype=np.uint8))
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(data[:6]) + gzip.compress(data[6:]))
    np.testing.assert_array_equal(read_idx(path), np.arange(10))


def test_images_checks() -> None:
    check_images(np.zeros((2, 28, 28), np.uint8), "f", (28, 28))
    with pytest.raises(ValueError, match=r"f: expected uint8 images with 3 dimensions"):
        check_images(np.zeros((2, 28), np.uint8), "f", (28, 28))
    with pytest.raises(ValueError, match=r"f: expected uint8 images .* got int32"):
        check_images(np.zeros((2, 28, 28), np.int32), "f", (28, 28))
    with pytest.raises(ValueError, match=r"f: expected 28x28 images, got 28x27"):
        check_images(np.zeros((2, 28, 27), np.uint8), "f", (28, 28))


def test_labels_checks() -> None:
    check_labels(np.array([0, 9, 3], np.uint8), "f", 10)
    with pytest.raises(ValueError, match=r"f: label 10 at index 2 is outside 0..9"):
        check_labels(np.array([0, 9, 10, 11], np.uint8), "f", 10)
    with pytest.raises(ValueError, match=r"f: expected uint8 labels with 1 dimension"):
        check_labels(np.zeros((2, 2), np.uint8), "f", 10)


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="IDX cannot store dtype int64"):
        write_idx(tmp_path / "x", np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.array(3, np.uint8))
