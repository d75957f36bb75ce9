"""``normlab bench bandwidth``: how close batch norm comes to the speed of memory.

Batch norm does a few floating-point operations per element and moves every element
through memory, so its speed limit is memory bandwidth. The fewest bytes a training pass
can move, with ``numel`` elements of ``itemsize`` bytes (per-channel vectors neglected)::

    forward            read x, write y                      2 * numel * itemsize
    forward+backward   forward, then read x and dy, write dx  5 * numel * itemsize

Achieved bandwidth is those bytes over the measured time, ``GB/s = bytes / seconds / 1e9``.
A pass that reads its input twice (statistics first, then the normalization, as every
two-pass batch norm must once the input outgrows the cache) can reach at most 2/3 of the
ceiling forward. The ceiling is measured in the same process: a plain copy
``out.copy_(x)`` of the same tensor (``2 * numel * itemsize`` bytes); the card's datasheet
peak is shown too where the device is a GPU listed in :data:`DATASHEET_GBPS`.

Candidates are timed interleaved (:mod:`normlab.bench.timing`): the copy, normlab's
``BatchNorm2d`` and ``torch.nn.BatchNorm2d`` (eager, and with ``compiled=True`` under
``torch.compile``), each forward alone and forward+backward
(``autograd.grad(bn(x), [x, weight, bias], dy)``), in training mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn

from normlab.bench.timing import Summary, measure
from normlab.errors import UsageError

Shape = tuple[int, int, int, int]

DEFAULT_SHAPE: dict[str, Shape] = {
    # a ResNet stage at batch 128: 411 MB in float32, several times a GPU's L2 cache
    "cuda": (128, 256, 56, 56),
    # 26 MB in float32: past a CPU core's private caches, quick to time
    "cpu": (32, 64, 56, 56),
}

# Peak memory bandwidth by the vendors' datasheets, GB/s; matched against the device name.
DATASHEET_GBPS: dict[str, float] = {
    "H200": 4800.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H100": 3350.0,  # SXM, HBM3
    "A100-SXM4-80GB": 2039.0,
    "A100-PCIE-80GB": 1935.0,
    "A100": 1555.0,  # 40 GB
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

FORWARD_UNITS = 2  # tensor-sized reads and writes: x in, y out
FORWARD_BACKWARD_UNITS = 5  # forward, then x and dy in, dx out
COPY_UNITS = 2  # x in, out out


def floor_bytes(numel: int, itemsize: int, units: int) -> int:
    """The fewest bytes moved by ``units`` tensor-sized reads and writes."""
    return units * numel * itemsize


def datasheet_gbps(device_name: str | None) -> float | None:
    """The datasheet peak of a GPU named ``device_name`` (first match in the table), or None."""
    if not device_name:
        return None
    for key, gbps in DATASHEET_GBPS.items():
        if key in device_name:
            return gbps
    return None


@dataclass(frozen=True)
class PassResult:
    """One candidate: seconds per call (min/median/max over repeats) and bytes per call."""

    name: str  # e.g. "normlab forward", "torch compiled forward+backward", "copy"
    seconds: Summary
    bytes: int

    @property
    def gbps(self) -> float:
        """Achieved bandwidth at the median time, GB/s."""
        return self.bytes / self.seconds.median / 1e9


@dataclass(frozen=True)
class BandwidthResult:
    """Every candidate on one input, the copy ceiling and the datasheet peak (or None)."""

    shape: Shape
    dtype: str
    device: str
    passes: tuple[PassResult, ...]
    datasheet_gbps: float | None

    @property
    def copy(self) -> PassResult:
        return self.by_name("copy")

    def by_name(self, name: str) -> PassResult:
        for result in self.passes:
            if result.name == name:
                return result
        raise KeyError(name)


def check_shape(shape: Sequence[int]) -> Shape:
    """``(N, C, H, W)`` with every size >= 1 and at least two values per channel."""
    if len(shape) != 4 or any(s < 1 for s in shape):
        raise UsageError(f"--shape needs four sizes N C H W, each >= 1; got {list(shape)}")
    n, c, h, w = shape
    if n * h * w < 2:
        raise UsageError(f"--shape {list(shape)}: batch norm needs >= 2 values per channel")
    return (n, c, h, w)


def default_shape(device: torch.device | str) -> Shape:
    return DEFAULT_SHAPE["cuda" if torch.device(device).type == "cuda" else "cpu"]


def _candidates(
    layers: dict[str, nn.Module], x: torch.Tensor, dy: torch.Tensor, out: torch.Tensor
) -> tuple[dict[str, Callable[[], object]], dict[str, int]]:
    """name -> function timed, and name -> bytes it moves at the least."""
    numel, itemsize = x.numel(), x.element_size()
    functions: dict[str, Callable[[], object]] = {"copy": lambda: out.copy_(x)}
    units = {"copy": COPY_UNITS}
    for label, layer in layers.items():
        inputs = [x, *layer.parameters()]
        functions[f"{label} forward"] = lambda layer=layer: layer(x)
        functions[f"{label} forward+backward"] = lambda layer=layer, inputs=inputs: (
            torch.autograd.grad(layer(x), inputs, dy)
        )
        units[f"{label} forward"] = FORWARD_UNITS
        units[f"{label} forward+backward"] = FORWARD_BACKWARD_UNITS
    return functions, {k: floor_bytes(numel, itemsize, u) for k, u in units.items()}


def bench_bandwidth(
    shape: Sequence[int] | None = None,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    compiled: bool = False,
    ours_lib: ModuleType | None = None,
    **timing: Any,
) -> BandwidthResult:
    """Time batch norm's training passes and the copy ceiling on one ``(N, C, H, W)`` input.

    The input is ``x ~ N(0.5, 2^2)`` and the output gradient ``dy ~ N(0, 1)`` in ``dtype``
    (parameters stay float32, as in mixed precision); ``timing`` goes to
    :func:`normlab.bench.timing.measure`.
    """
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    device = torch.device(device)
    shape = check_shape(shape if shape is not None else default_shape(device))
    if ours_lib is None:
        import normlab.nn as ours_lib
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).mul_(2.0).add_(0.5)
    x = x.to(device=device, dtype=DTYPES[dtype]).requires_grad_()
    dy = torch.randn(shape, generator=generator).to(device=device, dtype=DTYPES[dtype])
    out = torch.empty_like(x, requires_grad=False)
    layers: dict[str, nn.Module] = {
        "normlab": ours_lib.BatchNorm2d(shape[1]).to(device).train(),
        "torch": nn.BatchNorm2d(shape[1]).to(device).train(),
    }
    if compiled:
        torch._dynamo.reset()
        layers["normlab compiled"] = torch.compile(layers["normlab"])
        layers["torch compiled"] = torch.compile(layers["torch"])
    if device.type == "cuda":
        timing.setdefault("sync", torch.cuda.synchronize)
    functions, moved = _candidates(layers, x, dy, out.detach())
    measured = measure(functions, **timing)
    passes = tuple(PassResult(name, measured[name].summary, moved[name]) for name in functions)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return BandwidthResult(shape, dtype, str(device), passes, datasheet_gbps(name))
