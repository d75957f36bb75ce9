"""What normlab's Triton kernels share: the accumulation and statistics types, scalars
passed in two float32 halves, placeholders for optional tensors, the machine's size, and
a launch that skips Triton's per-call argument analysis once a kernel is compiled."""

import functools
import struct
from collections.abc import Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

try:
    from triton import knobs
except ImportError:  # Triton before 3.4: every launch takes Triton's own path
    knobs = None

PROGRAMS_PER_SM = 4  # programs per multiprocessor a split launch aims at


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics in float64 for float64 input, else float32 (half precision included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_type(dtype: torch.dtype) -> tl.dtype:
    """The type sums run in inside the kernels: :func:`stat_dtype`'s, as Triton's."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def halves(value: float) -> tuple[float, float]:
    """``value`` as ``hi + lo``, each a float32 (Triton passes Python floats as float32,
    which put float64 running statistics off by 1e-8): 48 bits, ~1e-14 relative."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, value - hi


@triton.jit
def joined(hi, lo, ACC: tl.constexpr):
    """A scalar passed as :func:`halves`, in the accumulation type."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


def dtypes(*tensors: Tensor | None) -> tuple[torch.dtype | None, ...]:
    """The dtypes of a launch's tensors (None for an optional one left out): with the
    shapes, what a compiled kernel is specialised for (:func:`launch`'s key)."""
    return tuple(None if t is None else t.dtype for t in tensors)


def ptr(tensor: Tensor | None, placeholder: Tensor) -> Tensor:
    """A pointer argument: ``tensor``, or for an optional one left out a placeholder the
    kernel won't read."""
    return placeholder if tensor is None else tensor


@functools.cache
def programs(device: torch.device, per_sm: int = PROGRAMS_PER_SM) -> int:
    """How many programs fill ``device``: ``per_sm`` per multiprocessor (a few under
    Triton's interpreter, where the tests run them on the CPU)."""
    if device.type != "cuda":
        return 8
    return per_sm * torch.cuda.get_device_properties(device).multi_processor_count


# key -> (compiled kernel, the constexpr values in parameter order); one entry per shape,
# so emptied when it reaches MAX_LAUNCHERS (inputs of ever new shapes)
_COMPILED: dict[tuple[Any, ...], tuple[Any, tuple[Any, ...]]] = {}
MAX_LAUNCHERS = 4096


def _aligned(args: Sequence[Any]) -> bool:
    """Every tensor argument starts on a 16-byte boundary (what Triton assumes of the
    pointers it compiled for, when they did)."""
    return all(a.data_ptr() % 16 == 0 for a in args if isinstance(a, Tensor))


def _hooked() -> bool:
    """A launch hook is set (e.g. by a profiler): launches must take Triton's own path."""
    hook = knobs.runtime.launch_enter_hook  # a chain of hooks in Triton 3.6, once None
    return bool(hook.calls) if hasattr(hook, "calls") else hook is not None


def launch(kernel: Any, grid: tuple[int, ...], key: tuple[Any, ...], args: Sequence[Any],
           **constexprs: Any) -> None:  # fmt: skip
    """``kernel[grid](*args, **constexprs)``, the second time on through the compiled
    kernel's own launcher.

    Triton's ``kernel[grid](...)`` works out on every call, in Python, how each argument
    specialises the kernel (pointer alignment, integers equal to 1 or divisible by 16,
    dtypes), builds a cache key from it and looks the compiled kernel up: on an H200's
    host, under ``cProfile``, four to five times the compiled launcher's own cost, as much
    as a small kernel runs. ``key`` must determine all of
    that but the alignment (the caller's shapes, dtypes and flags; the integer arguments
    follow from the shapes), which is checked here; the compiled kernel is then launched
    directly on the current stream. Under Triton's interpreter, with a launch hook set
    (profilers), for unaligned tensors or with a Triton older than 3.4, every launch takes
    Triton's own path.
    """
    direct = knobs is not None and args[0].is_cuda and _aligned(args)
    device = torch.cuda.current_device() if direct else -1
    found = _COMPILED.get((kernel, device, *key)) if direct else None
    if found is not None and not _hooked():
        compiled, trailing = found
        stream = torch._C._cuda_getCurrentRawStream(device)
        compiled.run(*grid, *(1,) * (3 - len(grid)), stream, compiled.function,
                     compiled.packed_metadata, None, None, None, *args, *trailing)  # fmt: skip
        return
    compiled = kernel[grid](*args, **constexprs)
    if direct and getattr(compiled, "function", None) is not None:
        trailing = tuple(constexprs[name] for name in kernel.arg_names[len(args) :])
        if len(_COMPILED) >= MAX_LAUNCHERS:
            _COMPILED.clear()
        _COMPILED[(kernel, device, *key)] = (compiled, trailing)
