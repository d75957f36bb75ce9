"""normlab's fused CPU kernels: the same formulas as :mod:`normlab.functional`, in C++.

The pure-tensor code in :mod:`normlab.functional` is the reference: it runs everywhere
(CUDA, half precision, ``torch.compile``) and is what the docs explain. On CPU, eager
mode, float32/float64 and contiguous tensors, a few tens of small tensor operations per
layer cost more in dispatch than the arithmetic itself, so the same formulas also exist as
loops (``batch_norm.cpp``, ``layer_norm.cpp``, ``group_norm.cpp``): a few passes over
the data each way, as ``torch.nn``'s own kernels do; ``avg_pool.cpp`` is the 2x2 average
pool of the tutorial's LeNet (:class:`normlab.models.AvgPool2d`);
``caching_allocator.cpp`` is a CPU allocator that reuses freed blocks
(:func:`cache_cpu_memory`). They are compiled by ``make`` (:mod:`normlab.kernels.build`)
and registered as ``torch.ops.normlab.*``.

:func:`ops` returns that namespace, or None when the library is not built, is older than
its sources (a warning says to run ``make kernels``) or ``NORMLAB_KERNELS=0`` is set;
normlab then uses the pure-tensor code alone. Both paths
are tested against ``torch.nn``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

LIBRARY = Path(__file__).resolve().parent / "_kernels.so"
_FLOATS = (torch.float32, torch.float64)
_UNLOADED = object()
_ops: Any = _UNLOADED  # torch.ops.normlab, None (off or not built), or not loaded yet


def ops() -> Any | None:
    """``torch.ops.normlab`` when the kernels are built and enabled, else None."""
    global _ops
    if _ops is _UNLOADED:
        _ops = _load()
    return _ops


def _load() -> Any | None:
    if os.environ.get("NORMLAB_KERNELS", "1") == "0" or not LIBRARY.is_file():
        return None
    from normlab.kernels.build import is_stale

    if is_stale():  # built from older sources: its operators may not match this code
        warnings.warn(
            "normlab's kernels are older than their sources; run `make kernels` to rebuild "
            "them (until then normlab uses its tensor code)",
            stacklevel=2,
        )
        return None
    try:
        torch.ops.load_library(str(LIBRARY))
    except (OSError, RuntimeError):  # built for another torch or machine: use the tensors
        return None
    return torch.ops.normlab


def set_enabled(enabled: bool) -> None:
    """Turn the kernels on (if built) or off in this process, e.g. to compare the paths."""
    global _ops
    _ops = _load() if enabled else None


def runs_on(device: str | torch.device) -> bool:
    """True when the kernels are built, enabled, and ``device`` is the CPU they run on."""
    return ops() is not None and torch.device(device).type == "cpu"


def applies(input: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """True when the kernels can take these tensors: eager mode, CPU, contiguous, one
    float32/float64 dtype (``None`` entries are optional arguments left out).

    Called on every forward and backward, so it is written to be cheap.
    """
    if torch.compiler.is_compiling():  # the compiler fuses the tensor code itself
        return False
    if _ops is None or (_ops is _UNLOADED and ops() is None):
        return False
    dtype = input.dtype
    if dtype not in _FLOATS or not input.is_cpu or not input.is_contiguous():
        return False
    for other in others:
        if other is not None and (
            other.dtype != dtype or not other.is_cpu or not other.is_contiguous()
        ):
            return False
    return True


DEFAULT_MAX_CACHED_BYTES = 1 << 30  # freed blocks kept for reuse, at most (1 GiB)


def cache_cpu_memory(max_cached_bytes: int = DEFAULT_MAX_CACHED_BYTES) -> bool:
    """Make torch's CPU allocator in this process cache freed blocks (``caching_allocator.cpp``).

    A training step allocates its activations and gradients afresh; with the default
    allocator a block of ~1 MB goes back to the kernel when freed and its pages fault
    again on the next step (on LeNet 90–1200 page faults per step, up to a quarter of the
    step). Cached, they are reused: ~0 faults. Blocks of 64 KiB and more are kept per
    size up to ``max_cached_bytes`` in all; the process's memory then stays near its peak.
    Tensors allocated before keep their own allocator. Returns False (and changes
    nothing) when the kernels are not built or are off (``NORMLAB_KERNELS=0``).
    """
    if not isinstance(max_cached_bytes, int) or max_cached_bytes < 0:
        raise ValueError(
            f"max_cached_bytes must be a non-negative integer, got {max_cached_bytes!r}"
        )
    library = ops()
    if library is None:
        return False
    library.use_caching_cpu_allocator(max_cached_bytes)
    return True


def cached_cpu_bytes() -> int:
    """Bytes of freed blocks the caching CPU allocator holds for reuse (0 without it)."""
    library = ops()
    return 0 if library is None else int(library.cached_cpu_bytes())
