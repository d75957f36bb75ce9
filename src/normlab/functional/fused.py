"""Layer and group norm through normlab's fused kernels (:mod:`normlab.kernels`).

The kernels run :mod:`normlab.functional.feature`'s formulas as loops (the CPU's, in C++)
or as Triton programs (CUDA): a few passes over the data each way. These
``autograd.Function`` s connect them to autograd the way batch norm does: the forward
saves the input and two numbers per row (the bytes ``torch.nn`` saves: on the CPU the
rounded first mean ``m`` and ``rstd``, on CUDA the mean's offset from the row's first
value and ``rstd``), the backward recomputes ``xhat`` from them in its loops. When a
graph of the backward is wanted (``create_graph=True``, double backward), the gradient is
that of the plain formula, differentiated from the saved input.

:func:`layer_norm` and :func:`group_norm` expect inputs already checked by their public
twins in :mod:`normlab.functional.feature`, and ``ops`` from
:func:`normlab.kernels.ops_for`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def _incoming(grad_out: Tensor, input: Tensor) -> Tensor:
    """The output gradient as the kernels take it: contiguous, in the input's dtype."""
    grad_out = grad_out.contiguous()
    return grad_out if grad_out.dtype == input.dtype else grad_out.to(input.dtype)


def _as(grad: Tensor | None, param: Tensor | None) -> Tensor | None:
    """A parameter's gradient in the parameter's shape and dtype."""
    if grad is None or param is None:
        return grad
    return grad.view(param.shape).to(param.dtype)


class _LayerNormFused(torch.autograd.Function):
    """Layer norm over rows of ``width`` values, through the kernels."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        shape: tuple[int, ...],
        eps: float,
        ops: Any,
    ) -> Tensor:
        width = math.prod(shape)
        out, stats = ops.layer_norm_forward(input, weight, bias, width, eps)
        ctx.save_for_backward(input, stats, weight, bias)
        ctx.shape, ctx.eps, ctx.ops = shape, eps, ops
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, stats, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            from normlab.functional.feature import _grads_of_plain, _layer_norm_plain

            grads = _grads_of_plain(
                lambda x, w, b: _layer_norm_plain(x, ctx.shape, w, b, ctx.eps),
                (input, weight, bias),
                needs,
                grad_out,
            )
            return (*grads, None, None, None)
        grad_out = _incoming(grad_out, input)
        dx, dw, db = ctx.ops.layer_norm_backward(grad_out, input, stats, weight, *needs)
        return dx, _as(dw, weight), _as(db, bias), None, None, None


class _GroupNormFused(torch.autograd.Function):
    """Group norm of ``(N, C, *)`` with ``num_groups`` groups, through the kernels."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        num_groups: int,
        eps: float,
        ops: Any,
    ) -> Tensor:
        out, stats = ops.group_norm_forward(input, weight, bias, num_groups, eps)
        ctx.save_for_backward(input, stats, weight)  # not bias: dbias needs only dy
        ctx.num_groups, ctx.eps, ctx.ops = num_groups, eps, ops
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, stats, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            from normlab.functional.feature import _grads_of_plain, _group_norm_plain

            dx, dw = _grads_of_plain(
                lambda x, w: _group_norm_plain(x, ctx.num_groups, w, None, ctx.eps),
                (input, weight),
                needs[:2],
                grad_out,
            )
            db = grad_out.sum([0, *range(2, grad_out.dim())]) if needs[2] else None
            return dx, dw, db, None, None, None
        grad_out = _incoming(grad_out, input)
        dx, dw, db = ctx.ops.group_norm_backward(
            grad_out, input, stats, weight, ctx.num_groups, *needs
        )
        db = db if db is None or ctx.bias_dtype is None else db.to(ctx.bias_dtype)
        return dx, _as(dw, weight), db, None, None, None


def layer_norm(
    input: Tensor,
    shape: tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    ops: Any,
) -> Tensor:
    """Layer norm through the kernels ``ops`` (with autograd when a graph is recorded)."""
    return _LayerNormFused.apply(input, weight, bias, shape, eps, ops)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    ops: Any,
) -> Tensor:
    """Group norm through the kernels ``ops`` (with autograd when a graph is recorded)."""
    return _GroupNormFused.apply(input, weight, bias, num_groups, eps, ops)
