"""What normlab's Triton kernels share: the accumulation and statistics types, scalars
passed in two float32 halves, placeholders for optional tensors, the machine's size."""

import functools
import struct

import torch
import triton
import triton.language as tl
from torch import Tensor

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


def ptr(tensor: Tensor | None, placeholder: Tensor) -> Tensor:
    """A pointer argument: ``tensor``, or for an optional one left out a placeholder the
    kernel won't read."""
    return placeholder if tensor is None else tensor


@functools.cache
def programs(device: torch.device) -> int:
    """How many programs fill ``device``: ``PROGRAMS_PER_SM`` per multiprocessor (a few
    under Triton's interpreter, where the tests run them on the CPU)."""
    if device.type != "cuda":
        return 8
    return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
