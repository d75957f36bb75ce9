"""Layer and group norm through normlab's fused CPU kernels (:mod:`normlab.kernels`).

The kernels run :mod:`normlab.functional.feature`'s formulas as loops: three passes
forward (two for the shifted statistics, one for the output), three backward. These
``autograd.Function`` s connect them to autograd the way batch norm does: the forward
saves the input and two numbers per row (the rounded first mean ``m`` and ``rstd``; the
bytes ``torch.nn`` saves), the backward recomputes the offset and ``xhat`` from them in
its loops. When a graph of the backward is wanted (``create_graph=True``, double
backward), the gradient is that of the plain formula, differentiated from the saved input.

:func:`layer_norm` and :func:`group_norm` expect inputs already checked by their public
twins in :mod:`normlab.functional.feature`, for which :func:`normlab.kernels.applies`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from normlab import kernels


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
    ) -> Tensor:
        width = math.prod(shape)
        out, stats = kernels.ops().layer_norm_forward(input, weight, bias, width, eps)
        ctx.save_for_backward(input, stats, weight, bias)
        ctx.shape, ctx.eps = shape, eps
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, stats, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled() or not kernels.applies(grad_out, input):
            from normlab.functional.feature import _grads_of_plain, _layer_norm_plain

            grads = _grads_of_plain(
                lambda x, w, b: _layer_norm_plain(x, ctx.shape, w, b, ctx.eps),
                (input, weight, bias),
                needs,
                grad_out,
            )
            return (*grads, None, None)
        dx, dw, db = kernels.ops().layer_norm_backward(grad_out, input, stats, weight, *needs)
        return (
            dx,
            None if dw is None else dw.view(weight.shape),
            None if db is None else db.view(bias.shape),
            None,
            None,
        )


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
    ) -> Tensor:
        out, stats = kernels.ops().group_norm_forward(input, weight, bias, num_groups, eps)
        ctx.save_for_backward(input, stats, weight)  # not bias: dbias needs only dy
        ctx.num_groups, ctx.eps = num_groups, eps
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, stats, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled() or not kernels.applies(grad_out, input):
            from normlab.functional.feature import _grads_of_plain, _group_norm_plain

            dx, dw = _grads_of_plain(
                lambda x, w: _group_norm_plain(x, ctx.num_groups, w, None, ctx.eps),
                (input, weight),
                needs[:2],
                grad_out,
            )
            db = grad_out.sum([0, *range(2, grad_out.dim())]) if needs[2] else None
            return dx, dw, db, None, None
        ops = kernels.ops()
        grads = ops.group_norm_backward(grad_out, input, stats, weight, ctx.num_groups, *needs)
        return (*grads, None, None)


def layer_norm(
    input: Tensor, shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Layer norm through the kernels (with autograd when a graph is recorded)."""
    return _LayerNormFused.apply(input, weight, bias, shape, eps)


def group_norm(
    input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Group norm through the kernels (with autograd when a graph is recorded)."""
    return _GroupNormFused.apply(input, weight, bias, num_groups, eps)
