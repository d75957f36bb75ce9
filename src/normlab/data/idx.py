"""IDX files (the MNIST format): read, validate and write, ``.gz`` or raw.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype> <ndim>``, then ``ndim``
big-endian uint32 dimensions, then the values in C order, big-endian. MNIST and
Fashion-MNIST use dtype ``0x08`` (uint8): images are ``0x00000803`` ``(N, 28, 28)``,
labels ``0x00000801`` ``(N,)``.

Every problem is a one-line :class:`ValueError` that names the file and what is wrong.
Checksums in normlab are over the *decompressed* bytes, so :func:`read_idx_bytes`
returns those bytes and :func:`parse_idx` turns them into an array.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

# IDX type code -> numpy dtype (big-endian on disk).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
IMAGES_MAGIC = 0x0803  # uint8, 3 dimensions
LABELS_MAGIC = 0x0801  # uint8, 1 dimension


def is_gzip(path: str | Path) -> bool:
    """True when ``path`` ends in ``.gz`` (the file name decides, not the content)."""
    return str(path).endswith(".gz")


def read_idx_bytes(path: str | Path) -> bytes:
    """The decompressed bytes of an IDX file (``.gz`` files are gunzipped in memory).

    Raises:
        ValueError: the ``.gz`` file is truncated or not gzip data.
        OSError: the file cannot be read.
    """
    path = Path(path)
    data = path.read_bytes()
    if not is_gzip(path):
        return data
    return gunzip(data, path)


def gunzip(data: bytes, path: str | Path) -> bytes:
    """Decompress gzip ``data``; a one-line ValueError naming ``path`` if it is truncated
    or not gzip at all."""
    # zlib directly: it tells a truncated stream (no eof) from a complete one, and it is
    # quicker than gzip.decompress (docs/results/machine.md).
    decompressor = zlib.decompressobj(wbits=31)
    try:
        out = decompressor.decompress(data)
    except zlib.error as error:
        raise ValueError(f"{path}: not a valid gzip file ({error})") from None
    if not decompressor.eof:
        raise ValueError(f"{path}: gzip data is truncated (incomplete download?)")
    if decompressor.unused_data:  # several gzip members: rare, let gzip handle it
        try:
            out = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: not a valid gzip file ({error})") from None
    return out


IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions: (N, H, W)
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension: (N,)
_KIND = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}


def parse_idx(
    data: bytes, name: str | Path = "<bytes>", expected_magic: int | None = None
) -> np.ndarray:
    """Parse the decompressed bytes of an IDX file into an array in native byte order.

    Validates the magic number (two zero bytes, a known type code, at least one
    dimension) and that the byte length is exactly the header plus the values.

    Args:
        data: the whole decompressed file.
        name: how errors name the file.
        expected_magic: when given, a file with another magic number is refused before
            its size is checked (a labels file holding images names the wrong magic).

    Returns:
        A read-only view for uint8 data (no copy); other dtypes are converted to native
        byte order. Shape: the dimensions in the header.
    """
    if len(data) < 4:
        raise ValueError(f"{name}: too short for an IDX file ({len(data)} bytes, need >= 4)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    magic = f"0x{int.from_bytes(data[:4], 'big'):08x}"
    if zero != 0:
        raise ValueError(f"{name}: bad IDX magic number {magic} (must start with two zero bytes)")
    if code not in IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX type code 0x{code:02x} in magic number {magic}")
    if ndim == 0:
        raise ValueError(f"{name}: IDX magic number {magic} declares 0 dimensions")
    found = int.from_bytes(data[:4], "big")
    if expected_magic is not None and found != expected_magic:
        wanted = _KIND.get(expected_magic, "this file")
        holds = f" (the magic of {_KIND[found]})" if found in _KIND else ""
        raise ValueError(
            f"{name}: IDX magic number {magic}{holds} where {wanted} need "
            f"0x{expected_magic:08x}; the files may be swapped or renamed"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{name}: truncated IDX header ({len(data)} bytes, need {header} for {ndim} dims)"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{name}: {what}: {len(data)} bytes, the header {tuple(shape)} says {expected}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    return array


def read_idx(path: str | Path) -> np.ndarray:
    """Read and validate an IDX file, ``.gz`` or raw. See :func:`parse_idx`."""
    return parse_idx(read_idx_bytes(path), path)


def check_images(array: np.ndarray, name: str | Path, size: tuple[int, int] | None) -> None:
    """Raise ValueError unless ``array`` is uint8 ``(N, H, W)`` (and ``(H, W) == size``)."""
    if array.dtype != np.uint8 or array.ndim != 3:
        raise ValueError(
            f"{name}: expected uint8 images with 3 dimensions (magic 0x00000803), "
            f"got {array.dtype} with {array.ndim} dimensions {array.shape}"
        )
    if size is not None and tuple(array.shape[1:]) != tuple(size):
        raise ValueError(
            f"{name}: expected {size[0]}x{size[1]} images, got {array.shape[1]}x{array.shape[2]}"
        )


def check_labels(array: np.ndarray, name: str | Path, num_classes: int) -> None:
    """Raise ValueError unless ``array`` is uint8 ``(N,)`` with values in ``0..num_classes-1``."""
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(
            f"{name}: expected uint8 labels with 1 dimension (magic 0x00000801), "
            f"got {array.dtype} with {array.ndim} dimensions {array.shape}"
        )
    if array.size and int(array.max()) >= num_classes:
        bad = int(np.argmax(array >= num_classes))
        raise ValueError(
            f"{name}: label {int(array[bad])} at index {bad} is outside 0..{num_classes - 1}"
        )


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as IDX bytes (header + big-endian values)."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        valid = ", ".join(str(d.newbyteorder("=")) for d in IDX_DTYPES.values())
        raise TypeError(f"IDX cannot store dtype {array.dtype}; valid: {valid}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    header = struct.pack(">HBB", 0, _CODES[native], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[_CODES[native]]).tobytes()


def write_idx(path: str | Path, array: np.ndarray | object) -> None:
    """Write ``array`` (numpy or torch) as an IDX file; gzip-compressed when ``path`` ends in .gz.

    Example:
        >>> write_idx(tmp / "train-labels-idx1-ubyte.gz", np.array([3, 1, 4], np.uint8))
    """
    if hasattr(array, "detach"):  # a torch.Tensor, without importing torch here
        array = array.detach().cpu().numpy()
    data = idx_bytes(np.asarray(array))
    if is_gzip(path):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    Path(path).write_bytes(data)
