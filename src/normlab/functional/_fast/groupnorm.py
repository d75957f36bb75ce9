"""Group norm's fast paths: normlab's kernels, and the formulas in place on tensors.

:mod:`normlab.functional.groupnorm` holds the formulas; here is how they run eagerly.

- The operator (:class:`OperatorGroupNorm`): ``torch.ops.normlab.group_norm``, the loops of
  ``group_norm.cpp`` with their backward registered for autograd in C++ (``autograd.cpp``),
  one call with no Python ``autograd.Function``; the same loops, so the same bits. On CUDA
  its kernels are the Triton ones (:func:`normlab.kernels.cuda_operators`).
- Kernels (:class:`KernelGroupNorm`): ``group_norm.cpp`` on the CPU, the Triton kernels of
  :mod:`normlab.kernels.triton.feature_norm` on CUDA; two numbers per (sample, group) are
  saved, from which the backward recomputes ``xhat`` in its loops.
- Tensors (:class:`TensorGroupNorm`): the forward standardises rows ``(N * G, S)`` and
  computes the output in ``xhat``'s memory; the backward recomputes ``xhat`` from the input
  (the same bits), sums per (sample, channel), and assembles ``dx`` by multiply-adds in
  the memory of ``g * xhat``.

Both save only ``input`` and ``weight`` (and the kernels' statistics), not ``bias``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from normlab import kernels
from normlab.functional._autograd import FastPath, Grads, Needs, Operator, Saved, Stats
from normlab.functional._common import as_layout, compute_dtype
from normlab.functional._fast.layernorm import incoming
from normlab.functional._fast.rows import standardize


@dataclass(slots=True)
class OperatorGroupNorm(Operator):
    """Group norm of ``(N, C, *)`` in ``num_groups`` groups as ``torch.ops.normlab.group_norm``."""

    ops: Any
    num_groups: int
    eps: float

    def __call__(self, input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        return self.ops.group_norm(input, self.num_groups, weight, bias, self.eps)


@dataclass(slots=True)
class KernelGroupNorm(FastPath):
    """Group norm of ``(N, C, *)`` in ``num_groups`` groups through ``ops``."""

    ops: Any
    num_groups: int
    eps: float

    def forward(
        self, input: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Stats]:
        out, stats = self.ops.group_norm_forward(input, weight, bias, self.num_groups, self.eps)
        return out, (stats,)

    def backward(self, grad_out: Tensor, saved: Saved) -> Grads:
        input, weight, (stats,) = saved.input, saved.weight, saved.stats
        return self.ops.group_norm_backward(
            incoming(grad_out, input), input, stats, weight, self.num_groups, *saved.needs
        )


@dataclass(slots=True)
class TensorGroupNorm(FastPath):
    """Group norm of ``(N, C, *)`` in ``num_groups`` groups as in-place tensor arithmetic."""

    num_groups: int
    eps: float

    def _rows(self, input: Tensor) -> tuple[Tensor, Tensor]:
        """``(xhat, rstd)`` of rows ``(N * G, S)``, in the computation dtype."""
        rows = input.shape[0] * self.num_groups
        x = as_layout(input, (rows, input.numel() // rows), compute_dtype(input.dtype))
        return standardize(x, self.eps)

    def forward(
        self, input: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Stats]:
        """``y = xhat * weight_c + bias_c``, computed in ``xhat``'s memory."""
        n, c = input.shape[:2]
        per_channel = self._rows(input)[0].view(n, c, -1)
        y = _channel_affine(per_channel, weight, bias)
        return as_layout(y, input.shape, input.dtype), ()

    def backward(self, grad_out: Tensor, saved: Saved) -> Grads:
        input, weight = saved.input, saved.weight
        xhat, rstd = self._rows(input)
        n, c = input.shape[:2]
        w = None if weight is None else as_layout(weight, weight.shape, rstd.dtype)
        g = as_layout(grad_out, (n, c, xhat.numel() // (n * c)), rstd.dtype)
        return grads_in_place(g, xhat, rstd, w, self.num_groups, saved.needs)


def _channel_affine(xhat: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``xhat * weight_c + bias_c`` in ``xhat``'s memory, ``xhat`` of shape ``(N, C, positions)``.

    One fused multiply-add when there is one position per channel; otherwise a multiply and
    an add (ATen vectorises a loop with one per-row scalar operand, not with two).
    """
    n, c, positions = xhat.shape
    if positions == 1:
        xhat = xhat.view(n, c)
    shape = (c,) if positions == 1 else (c, 1)
    w = None if weight is None else weight.view(shape)
    b = None if bias is None else bias.view(shape)
    if w is not None and b is not None and positions == 1:
        return torch.addcmul(b, xhat, w, out=xhat)
    if w is not None:
        y = torch.mul(xhat, w, out=xhat)
        return y if b is None else y.add_(b)
    if b is not None:
        return torch.add(xhat, b, out=xhat)
    return xhat


def grads_in_place(
    g: Tensor,
    xhat: Tensor,
    rstd: Tensor,
    w: Tensor | None,
    groups: int,
    needs: Needs,
) -> Grads:
    """``(dx, dweight, dbias)`` for ``g`` of shape ``(N, C, positions)``, in place.

    Sums per (sample, channel) over positions, ``sg = sum(g)`` and ``sgx = sum(g * xhat)``,
    give ``dbias = sum_n sg``, ``dweight = sum_n sgx``, and per (sample, group) of ``S``
    values ``a = sum_c w_c sg`` and ``b = sum_c w_c sgx``; then one pass of multiply-adds::

        dx = (rstd * w_c) * g - rstd * (a + b * xhat) / S
    """
    need_x, need_w, need_b = needs
    g = g.contiguous()  # a channels_last gradient arrives as a strided view; gx is viewed below
    n, c, positions = g.shape
    gx = g * xhat.view(n, c, positions)
    if positions == 1:
        sg, sgx = g.view(n, c), gx.view(n, c)
    else:
        sg, sgx = g.sum(-1), gx.sum(-1)
    db = sg.sum(0) if need_b else None
    dw = sgx.sum(0) if need_w else None
    if not need_x:
        return None, dw, db
    if w is not None:
        sg, sgx = sg * w, sgx * w
    a = sg.view(n, groups, -1).sum(-1, keepdim=True)
    b = sgx.view(n, groups, -1).sum(-1, keepdim=True)
    k = rstd.view(n, groups, 1) * (-1.0 / xhat.shape[-1])
    dx = torch.mul(xhat.view(n, groups, -1), b.mul_(k), out=gx.view(n, groups, -1))
    dx.add_(a.mul_(k))  # gx is summed: its memory becomes dx
    scale = rstd.view(n, groups, 1)
    scale = scale.expand(n, groups, c // groups) if w is None else scale * w.view(groups, -1)
    return gx.addcmul_(g, scale.reshape(n, c, 1)), dw, db


def operator_for(
    input: Tensor, num_groups: Any, weight: Tensor | None, bias: Tensor | None
) -> Callable[..., Tensor] | None:
    """``torch.ops.normlab.group_norm`` where it takes these arguments as they are, else None.

    The check a small layer can afford on every call, in one go: the kernels apply
    (:func:`normlab.kernels.operators_apply`), ``num_groups`` is a positive int that divides the
    channels of an ``(N, C, *)`` input, each group of a sample has more than one value
    (``numel > num_groups``), and the parameters are ``(C,)``. Anything else goes the long
    way: the checks and errors of :func:`normlab.functional.groupnorm.group_norm`.
    """
    if type(num_groups) is not int or not kernels.operators_apply(input, weight, bias):
        return None
    if input.dim() < 2 or num_groups < 1 or input.numel() <= num_groups:
        return None
    channels = input.shape[1]
    if channels % num_groups != 0:
        return None
    for param in (weight, bias):
        if param is not None and param.shape != (channels,):
            return None
    return kernels.ops().group_norm.default  # the overload itself: no overload resolution


def fast_path(
    input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> FastPath | Operator:
    """The operator where it takes these tensors (:func:`normlab.kernels.operators_apply`),
    else the (Triton) kernels where they do, else the in-place tensor arithmetic."""
    if kernels.operators_apply(input, weight, bias):
        return OperatorGroupNorm(kernels.ops(), num_groups, eps)
    ops = kernels.ops_for(input, weight, bias)
    if ops is None:
        return TensorGroupNorm(num_groups, eps)
    return KernelGroupNorm(ops, num_groups, eps)
