"""DyT's fast path: the formulas of :mod:`normlab.functional.dynamic_tanh` in place.

One ``autograd.Function`` (:class:`DynamicTanhFunction`) in place of the three nodes
autograd records for the plain formula. The forward computes ``t = tanh(alpha * x)`` in the
memory of ``alpha * x`` and the output with one ``addcmul``; it saves ``input`` and ``t``
(what autograd of the plain formula saves too). The backward::

    g       = dy * (1 - t^2) * weight          (torch's tanh_backward, then one product)
    dalpha  = sum(g * x)                       (a dot product: no temporary)
    dx      = g * alpha                        (in g's memory)
    dweight = sum over leading dims of dy * t  dbias = sum over leading dims of dy

When a graph of the backward is wanted (``create_graph=True``) it calls the differentiable
closed form it was given instead, so higher derivatives are those of the plain formula.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from normlab.functional._common import as_dtype, as_layout

Grads = tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]
ClosedForm = Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor | None], Grads]


def forward(
    x: Tensor, alpha: Tensor, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(weight * t + bias, t)`` with ``t = tanh(alpha * x)``, all in ``x``'s dtype."""
    dtype = x.dtype
    t = torch.mul(x, as_dtype(alpha, dtype)).tanh_()
    if weight is not None and bias is not None and t.is_contiguous():
        return torch.addcmul(as_dtype(bias, dtype), t, as_dtype(weight, dtype)), t
    if weight is not None and bias is not None:  # a channels-last view: addcmul is slower
        return torch.mul(t, as_dtype(weight, dtype)).add_(as_dtype(bias, dtype)), t
    if weight is not None:
        return t * as_dtype(weight, dtype), t
    if bias is not None:
        return t + as_dtype(bias, dtype), t
    return t.clone(), t


def _memory_order(t: Tensor) -> list[int]:
    return sorted(range(t.dim()), key=lambda d: -t.stride(d))


def total_product(a: Tensor, b: Tensor) -> Tensor:
    """``sum(a * b)`` as one dot product when both are dense in the same memory order (a
    channels-last view included), else as a product and a sum."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    order = _memory_order(a)
    pa, pb = a.permute(order), b.permute(order)
    if pa.is_contiguous() and pb.is_contiguous():
        return torch.dot(pa.view(-1), pb.view(-1))
    return torch.mul(a, b).sum()


def backward(
    dy: Tensor,
    x: Tensor,
    t: Tensor,
    alpha: Tensor,
    weight: Tensor | None,
    needs: tuple[bool, bool, bool, bool],
    lead: tuple[int, ...],
) -> Grads:
    """``(dx, dalpha, dweight, dbias)`` (``None`` where not needed), in ``x``'s dtype;
    ``lead`` are the dimensions ``weight`` and ``bias`` broadcast over."""
    need_x, need_alpha, need_w, need_b = needs
    dweight = torch.mul(dy, t).sum(lead) if need_w else None
    dbias = dy.sum(lead) if need_b else None
    if not (need_x or need_alpha):
        return None, None, dweight, dbias
    g = torch.ops.aten.tanh_backward(dy, t)
    if weight is not None:
        g.mul_(as_dtype(weight, g.dtype))
    dalpha = total_product(g, x) if need_alpha else None
    dx = g.mul_(as_dtype(alpha, g.dtype)) if need_x else None
    return dx, dalpha, dweight, dbias


class DynamicTanhFunction(torch.autograd.Function):
    """``(closed_form, input, alpha, weight, bias) -> weight * tanh(alpha * x) + bias``.

    ``input`` in its computation dtype (the caller converts half precision); gradients
    are returned in the shapes and dtypes of the arguments. Written with ``ctx`` in
    ``forward``: it never runs under ``torch.func`` (the plain formula does).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        closed_form: ClosedForm,
        input: Tensor,
        alpha: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
    ) -> Tensor:
        out, t = forward(input, alpha, weight, bias)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, t, alpha, weight)
        ctx.closed_form = closed_form
        ctx.bias = None if bias is None else torch.empty_like(bias, device="meta")
        return out

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if dy is None:
            return (None,) * 5
        x, t, alpha, weight = ctx.saved_tensors
        bias = ctx.bias  # its shape and dtype: the backward needs no values of it
        if torch.is_grad_enabled():  # a graph of the backward: the differentiable closed form
            grads = ctx.closed_form(dy, x, alpha, weight, bias)
        else:
            affine = weight if weight is not None else bias
            lead = tuple(range(x.dim() - (0 if affine is None else affine.dim())))
            needs = tuple(ctx.needs_input_grad[1:5])
            grads = backward(dy.to(x.dtype), x, t, alpha, weight, needs, lead)  # type: ignore[arg-type]
        params = (x, alpha, weight, bias)
        shaped = (
            None if g is None or p is None else as_layout(g, p.shape, p.dtype)
            for g, p in zip(grads, params, strict=True)
        )
        return (None, *shaped)
