"""Shared fixtures for the report tests: a strict PNG checker and a small real figure."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse_png(data: bytes) -> tuple[int, int]:
    """Check that ``data`` is a complete PNG file (signature, every chunk's CRC, IHDR
    first, IDAT present, IEND last, pixels inflate) and return ``(width, height)``."""
    assert data[:8] == PNG_SIGNATURE, "no PNG signature"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append(kind)
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height = struct.unpack(">II", data[16:24])
    assert len(zlib.decompress(idat)) > height  # at least one filter byte per row
    return width, height


@pytest.fixture
def check_png() -> Callable[[bytes], tuple[int, int]]:
    return parse_png


@pytest.fixture
def small_figure():
    """A real matplotlib figure (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], [1, 0, 1])
    ax.set_xlabel("epoch")
    return fig
