"""Suite-wide settings.

The tests run tiny tensors on a 2-core machine: torch's intra-op threads only add
overhead there, and on a busy machine two OpenMP threads waiting for each other make
tests several times slower. One thread for the whole suite (the CLI's default too).
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# normlab's Triton kernels run on CPU tensors through Triton's interpreter, which Triton
# picks when it is imported (normlab.kernels.run_triton_on_cpu)
os.environ.setdefault("TRITON_INTERPRET", "1")
# torch.compile's on-disk cache, one per ATen CPU capability: code compiled in a run under
# another ATEN_CPU_CAPABILITY (the suite runs again under `default`, and by hand under
# `avx2`) and loaded from a shared cache computed garbage in the compiled-layer tests
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(
        tempfile.gettempdir(),
        f"normlab-tests-inductor-{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}",
    ),
)

import torch  # after OMP_NUM_THREADS is set

torch.set_num_threads(1)


import importlib.util  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402

# A shell without job control starts background commands with Ctrl-C ignored, and an
# ignored signal stays ignored in every process started from them: the tests that send a
# real Ctrl-C to a real run would see it finish instead. Caught here, Ctrl-C is back at its
# default in the processes the tests start (a caught signal resets at exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def seeded(request: pytest.FixtureRequest) -> None:
    """Every test draws the same random inputs on every machine and in any order: torch's
    generator seeded from the test's own name (a stable hash, not Python's salted one)."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


CODE_PATHS = ["kernels", "tensors"]
if importlib.util.find_spec("triton") is not None:  # a dev install has it
    CODE_PATHS.append("triton")


@pytest.fixture(params=CODE_PATHS)
def code_path(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Run a test with each of normlab's code paths (:mod:`normlab.kernels`): its compiled
    CPU kernels (``make`` builds them, so they must be there), its pure-tensor code, and
    its CUDA kernels in Triton, run on the CPU by Triton's interpreter."""
    from normlab import kernels

    if request.param == "triton":
        request.getfixturevalue("triton_on_cpu")  # which sets it up and tears it down
        yield request.param
        return
    if request.param == "kernels":
        assert kernels.ops() is not None, (
            "kernels not built: run make (or python -m normlab.kernels.cpu)"
        )
    kernels.set_enabled(request.param == "kernels", gpu=False)
    yield request.param
    kernels.set_enabled(True)


@pytest.fixture
def triton_on_cpu():  # type: ignore[no-untyped-def]
    """The Triton kernels alone, on CPU tensors through Triton's interpreter (the CPU
    kernels off): ``code_path``'s ``triton`` case, for the Triton kernels' own tests."""
    from normlab import kernels

    assert kernels.run_triton_on_cpu()
    kernels.set_enabled(False, gpu=True)
    yield
    kernels.run_triton_on_cpu(False)
    kernels.set_enabled(True)


# PNG checks shared by every test that draws a figure
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
