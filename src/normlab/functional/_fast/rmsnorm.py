"""RMS norm's fast paths: normlab's CPU operator, and the formulas in place on tensors.

:mod:`normlab.functional.rmsnorm` holds the formulas; here is how they run eagerly.

- The CPU operator (:class:`CpuRMSNorm`): ``torch.ops.normlab.rms_norm``, the loops of
  ``rms_norm.cpp`` (one pass for ``sum(x^2)``, one for the output; two back) with their
  backward registered for autograd in C++ in the same file: one call with no Python
  ``autograd.Function``.
- Tensors (:class:`TensorRMSNorm`), everywhere else (half precision, CUDA, no kernels):
  the forward saves ``input``, ``weight`` and ``rstd`` (one number per row); the backward
  recomputes ``xhat`` and assembles ``dx`` in the memory of ``g * xhat``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from normlab import kernels
from normlab.functional._autograd import FastPath, Grads, Operator, Saved, Stats
from normlab.functional._common import compute_dtype
from normlab.functional._fast.layernorm import trailing
from normlab.functional._fast.rows import rstd_from_centred


@dataclass(slots=True)
class CpuRMSNorm(Operator):
    """RMS norm over the trailing ``shape`` as ``torch.ops.normlab.rms_norm`` (``ops``)."""

    ops: Any
    shape: tuple[int, ...]
    eps: float

    def __call__(self, input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        return self.ops.rms_norm(input, self.shape, weight, self.eps)


@dataclass(slots=True)
class TensorRMSNorm(FastPath):
    """RMS norm over rows of ``width`` values as in-place tensor arithmetic."""

    width: int
    eps: float

    def forward(
        self, input: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Stats]:
        x = input.reshape(-1, self.width).to(compute_dtype(input.dtype))
        rstd = rstd_from_centred(x, self.width, self.eps)
        out = x * rstd
        if weight is not None:
            out.mul_(weight.reshape(self.width))
        return out.view(input.shape).to(input.dtype), (rstd,)

    def backward(self, grad_out: Tensor, saved: Saved) -> Grads:
        """``dx = rstd * (g * w - c2 * xhat)`` with ``c2 = mean(g * w * xhat)`` per row."""
        (rstd,) = saved.stats
        need_x, need_w, _ = saved.needs
        width, cdtype, weight = self.width, rstd.dtype, saved.weight
        g = grad_out.reshape(-1, width).to(cdtype)
        xhat = saved.input.reshape(-1, width).to(cdtype) * rstd
        gx = g * xhat
        dw = gx.sum(0) if need_w else None
        if not need_x:
            return None, dw, None
        w = None if weight is None else weight.reshape(width).to(cdtype)
        c2 = gx.mean(-1, keepdim=True) if w is None else (gx @ w).unsqueeze(-1) / width
        xhat.mul_(-c2 * rstd)
        if w is None:
            dx = torch.addcmul(xhat, g, rstd, out=gx)
        else:
            dx = torch.addcmul(xhat, torch.mul(g, w, out=gx), rstd, out=gx)
        return dx, dw, None


def cpu_operator(
    input: Tensor, normalized_shape: Any, weight: Tensor | None
) -> Callable[..., Tensor] | None:
    """``torch.ops.normlab.rms_norm`` where it takes these arguments as they are, else None:
    the kernels apply, the input is not empty, ``normalized_shape`` is a tuple of ints that
    ends the input's shape and is the weight's (as
    :func:`normlab.functional._fast.layernorm.operator_for`); the input may have any
    strides (:func:`_kernels_take`)."""
    if type(normalized_shape) is not tuple or not _kernels_take(input, weight):
        return None
    if not trailing(input, normalized_shape):
        return None
    if weight is not None and weight.shape != normalized_shape:
        return None
    return kernels.ops().rms_norm.default  # the overload itself: no overload resolution


def fast_path(
    input: Tensor, shape: tuple[int, ...], weight: Tensor | None, eps: float
) -> FastPath | Operator:
    """The CPU operator where normlab's CPU kernels take these tensors, else the in-place
    tensor arithmetic."""
    if _kernels_take(input, weight):
        return CpuRMSNorm(kernels.ops(), shape, eps)
    return TensorRMSNorm(math.prod(shape), eps)


def _kernels_take(input: Tensor, weight: Tensor | None) -> bool:
    """:func:`normlab.kernels.applies`, the input of any strides: the operator copies a
    strided input into contiguous rows inside its call (one copy, as the tensor path's
    reshape makes, and no graph node), so that RMS norm over the channels of a
    convolutional map, a moved dimension, runs the kernels too. The output is contiguous,
    as the tensor path's is."""
    if input.is_contiguous():
        return kernels.applies(input, weight)
    if input.dtype not in (torch.float32, torch.float64) or not input.is_cpu:
        return False
    if weight is not None:
        return weight.dtype == input.dtype and kernels.applies(weight)
    return kernels.applies(input.new_empty(0))  # eager, and the kernels built and on
