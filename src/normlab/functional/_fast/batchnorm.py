"""Batch norm's fast paths: normlab's kernels, and the formulas in place on tensors.

:mod:`normlab.functional.batchnorm` holds the formulas; here is how they run eagerly.

- The operator (:class:`OperatorBatchNorm`): ``torch.ops.normlab.batch_norm_train``, the
  kernels below with their backward registered for autograd in C++ (``autograd.cpp``), one
  call with no Python ``autograd.Function``; the same loops, so the same bits. On CUDA its
  kernels are the Triton ones (:func:`normlab.kernels.cuda_operators`).
  :func:`train_by_operator` calls it first for the common valid call, before any other
  check (a module's call also counts its batch in the operator).
- Kernels (:class:`KernelBatchNorm`): ``batch_norm.cpp`` on the CPU (three passes forward,
  two backward, the running statistics updated in the same call), the Triton kernels of
  :mod:`normlab.kernels.triton.batch_norm` on CUDA. The backward centres on the rounded
  first mean ``m`` plus its offset (CUDA: the mean minus each channel's first value),
  recomputed from the input, which makes float32 gradients far from zero as accurate as
  float64.
- Tensors (:class:`TensorBatchNorm`): few passes, few operations, no temporaries. A fresh
  activation-sized tensor costs more than several in-place passes over one (page
  faults), so the forward allocates only its output and the backward only ``dx``, and
  both serve as scratch first. Scale and shift are two in-place passes (``mul_``,
  ``add_``): ``addcmul`` with two broadcast per-channel operands runs unvectorized,
  several times slower. Sums of squares are squared norms of contiguous ``(n, c)`` rows.
  Python scalars ride in the operations' own arguments (``value=``, ``alpha=``): a scalar
  operand costs a tensor allocation.
- Evaluation (:func:`channel_affine`): ``y = x * a_c + b_c`` in one pass of the kernels.

Both paths save ``input``, ``weight`` and two ``(C,)`` statistics: the centre (the mean,
or the kernels' own) and ``invstd``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from normlab import kernels
from normlab.functional._autograd import FastPath, Grads, Operator, Saved, Stats
from normlab.functional._common import (
    as_dtype,
    compute_dtype,
    per_channel,
    reduce_dims,
    update_running_stats,
)


@dataclass(slots=True)
class _TrainingBatchNorm(FastPath):
    """What both paths of training-mode batch norm hold: the running statistics they update
    (``None`` where not tracked), the momentum of this step and ``eps``."""

    running_mean: Tensor | None
    running_var: Tensor | None
    momentum: float
    eps: float


@dataclass(slots=True)
class OperatorBatchNorm(Operator):
    """Training-mode batch norm as ``torch.ops.normlab.batch_norm_train`` (``ops``): the
    running statistics (``None`` where not tracked) are updated in place by the operator."""

    ops: Any
    running_mean: Tensor | None
    running_var: Tensor | None
    momentum: float
    eps: float

    def __call__(self, input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        return self.ops.batch_norm_train(
            input, weight, bias, self.running_mean, self.running_var, self.momentum, self.eps
        )


@dataclass(slots=True)
class KernelBatchNorm(_TrainingBatchNorm):
    """Training-mode batch norm through ``ops`` (CPU or Triton kernels)."""

    ops: Any

    def forward(
        self, input: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Stats]:
        out, centre, invstd = self.ops.batch_norm_forward(
            input, weight, bias, self.running_mean, self.running_var, self.momentum, self.eps
        )
        return out, (centre, invstd)

    def backward(self, grad_out: Tensor, saved: Saved) -> Grads:
        centre, invstd = saved.stats
        grad_out = as_dtype(grad_out, saved.input.dtype)
        return self.ops.batch_norm_backward(grad_out, saved.input, centre, invstd, saved.weight)


@dataclass(slots=True)
class TensorBatchNorm(_TrainingBatchNorm):
    """Training-mode batch norm as in-place tensor arithmetic."""

    def forward(
        self, input: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Stats]:
        out, mean, invstd, var = normalize_in_place(input, weight, bias, self.eps)
        n = input.numel() // input.shape[1]
        update_running_stats(self.running_mean, self.running_var, mean, var, n, self.momentum)
        return out, (mean, invstd)

    def backward(self, grad_out: Tensor, saved: Saved) -> Grads:
        mean, invstd = saved.stats
        return grads_in_place(grad_out, saved.input, mean, invstd, saved.weight)


def fast_path(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
) -> FastPath | Operator:
    """The operator where it takes these tensors (:func:`normlab.kernels.operators_apply`),
    else the (Triton) kernels where they do, else the in-place tensor arithmetic."""
    if kernels.operators_apply(input, weight, bias, running_mean, running_var):
        return OperatorBatchNorm(kernels.ops(), running_mean, running_var, momentum, eps)
    ops = kernels.ops_for(input, weight, bias, running_mean, running_var)
    if ops is not None:
        return KernelBatchNorm(running_mean, running_var, momentum, eps, ops)
    return TensorBatchNorm(running_mean, running_var, momentum, eps)


def train_by_operator(
    input: Any,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float | None,
    eps: float,
    num_batches_tracked: Tensor | None = None,
) -> Tensor | None:
    """Training-mode batch norm in one call of the CPU operator, for the common valid call:
    an ``(N, C, *)`` input with more than one value per channel, ``(C,)`` parameters and
    buffers, ``eps > 0``, tensors the kernels take (:func:`normlab.kernels.applies`:
    eager, CPU, contiguous, float32/float64). None for any other call, before any side
    effect: the caller's general path then checks the arguments and picks the path.

    With ``num_batches_tracked`` the operator counts the batch in it first, and
    ``momentum=None`` is the cumulative average ``1 / num_batches_tracked``."""
    if not isinstance(input, Tensor) or input.dim() < 2 or not eps > 0.0:
        return None
    channels = input.shape[1]
    if input.numel() <= channels:  # empty, or one value per channel
        return None
    for other in (weight, bias, running_mean, running_var):
        if other is not None and other.shape != (channels,):
            return None
    if not kernels.operators_apply(input, weight, bias, running_mean, running_var):
        return None
    ops: Any = kernels.ops()
    out: Tensor = ops.batch_norm_train(
        input, weight, bias, running_mean, running_var, momentum, eps, num_batches_tracked
    )
    return out


def channel_affine(input: Tensor, scale: Tensor, shift: Tensor) -> Tensor | None:
    """``x * scale_c + shift_c`` in one pass of the kernels, or None where they do not apply
    (the kernel records no autograd graph: call it only when none is wanted)."""
    if input.dim() > 2 and kernels.applies(input, scale, shift):
        return kernels.ops().channel_affine(input, scale, shift)
    return None


# ---------------------------------------------------------------------------------------------
# The tensor path's arithmetic
# ---------------------------------------------------------------------------------------------


def _sum_and_sum_of_squares(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``sum(v)`` and ``sum(v^2)`` of ``(N, C, *)``, without a temporary copy.

    For a contiguous input with spatial dimensions the sum of squares is the squared 2-norm
    of each ``(n, c)`` row (a fast contiguous reduction), summed over ``n``.
    """
    if values.dim() > 2 and values.is_contiguous():
        rows = values.view(values.shape[0], values.shape[1], -1)
        return rows.sum((0, 2)), torch.linalg.vector_norm(rows, 2, -1).square_().sum(0)
    dims = reduce_dims(values)
    return values.sum(dims), (values * values).sum(dims)


def normalize_in_place(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batch-statistics forward: ``(out, mean, invstd, var)``; stats in ``compute_dtype``.

    ``var`` is the biased variance. Corrected two-pass statistics: the mean ``m`` first, then
    the sums of the centred values ``v = x - m``: ``mean = m + E[v]`` (``E[v]`` is ``m``'s
    rounding error) and ``var = E[v^2] - E[v]^2``, without cancellation since ``E[v]`` is
    tiny (``E[x^2] - E[x]^2`` cancels catastrophically for inputs far from zero). The output
    is ``y = v * scale + (bias - E[v] * scale)``: small values times the scale, centred on
    the exact mean, more accurately than ``torch.nn``.

    One activation-sized tensor is allocated, the output, which holds ``v`` for the sums
    (``sum(v^2)`` as squared norms of contiguous rows: no temporary) and is then scaled
    and shifted in place.
    """
    dims, ndim = reduce_dims(input), input.dim()
    n = input.numel() // input.shape[1]
    first_mean = input.mean(dims, dtype=compute_dtype(input.dtype))
    out = input - per_channel(first_mean, ndim)
    sum_v, sum_v2 = _sum_and_sum_of_squares(out)
    var = sum_v2.addcmul_(sum_v, sum_v, value=-1 / n).div_(n)  # E[v^2] - E[v]^2
    invstd = var.add(eps).rsqrt_()
    scale = invstd if weight is None else invstd * weight
    if bias is None:
        shift = torch.mul(sum_v, scale).mul_(-1 / n)
    else:
        shift = torch.addcmul(bias, sum_v, scale, value=-1 / n)  # bias - E[v] * scale
    if ndim == 2:  # per-channel vectors along the contiguous dim: one fused pass
        torch.addcmul(shift, out, scale, out=out)
    else:  # broadcast scalars along each row: two vectorized passes beat one addcmul
        out.mul_(per_channel(scale, ndim)).add_(per_channel(shift, ndim))
    mean = first_mean.add_(sum_v, alpha=1 / n)
    return as_dtype(out, input.dtype), mean, invstd, var


def grads_in_place(
    grad_out: Tensor, input: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None
) -> Grads:
    """Closed-form ``(dx, dweight, dbias)`` with in-place arithmetic (not differentiable).

    ``dx = scale * dy + k2 * (x - mean) + k3`` with ``scale = weight * invstd``,
    ``k2 = -scale * invstd * dweight / n`` and ``k3 = -scale * dbias / n``. The dot product
    ``dweight = sum(dy * (x - mean)) * invstd`` is taken on the centred input (stable far
    from zero). One activation-sized tensor is allocated, ``dx``, which first holds
    ``(x - mean) * dy`` for the dot product (reusing it beats a temporary, even when small).
    """
    dims, ndim = reduce_dims(input), input.dim()
    n = input.numel() // input.shape[1]
    mean_b = per_channel(mean, ndim)
    sum_dy = (
        grad_out.sum(dims) if grad_out.dtype == mean.dtype else grad_out.sum(dims, dtype=mean.dtype)
    )
    dx = input - mean_b
    dweight = dx.mul_(grad_out).sum(dims).mul_(invstd)
    torch.sub(input, mean_b, out=dx)
    scale = invstd if weight is None else invstd * weight
    coef = scale.mul(-1 / n)
    k2 = (invstd * dweight).mul_(coef)
    k3 = sum_dy * coef
    if ndim == 2:
        torch.addcmul(k3, dx, k2, out=dx)
    else:
        dx.mul_(per_channel(k2, ndim)).add_(per_channel(k3, ndim))
    dx.addcmul_(grad_out, per_channel(scale, ndim))
    return as_dtype(dx, input.dtype), dweight, sum_dy
