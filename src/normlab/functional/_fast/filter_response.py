"""FRN's fast path: the formulas of :mod:`normlab.functional.filter_response` in place.

One ``autograd.Function`` (:class:`FilterResponseFunction`) in place of the graph autograd
records for the plain formula. The input is seen as rows ``(N, C, m)``, ``m`` the number of
spatial positions. The forward::

    r = rsqrt(|x_row|^2 / m + eps)               (a squared 2-norm per row: one pass)
    z = x * (weight * r) + bias                  (one addcmul)
    below = z < tau;   y = max(z, tau)           (in z's memory)

saves ``input``, ``r`` (one number per row) and the mask ``below`` (one byte per element),
and the backward, with ``g = dy`` where not ``below`` (else 0), ``S = sum_row(g * x)``::

    A = weight * r;   B = -A * r^2 * S / m                       (per row)
    dx      = A * g + B * x                    (two passes, in g's memory)
    dweight = sum_N(r * S)   dbias = sum(g)   dtau = sum(dy) - dbias
    deps    = m / 2 * sum(B)                   (the learned eps: dr/deps = -r^3 / 2)

When a graph of the backward is wanted (``create_graph=True``) it calls the differentiable
closed form it was given instead, so higher derivatives are those of the plain formula.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from normlab.functional._common import as_dtype, as_layout
from normlab.functional._fast.rows import rstd_from_centred

Grads = tuple[Tensor | None, ...]
ClosedForm = Callable[..., Grads]


def rows_of(input: Tensor) -> Tensor:
    """``(N, C, *)`` viewed as ``(N, C, m)``, ``m`` spatial positions (1 for ``(N, C)``)."""
    return input.reshape(input.shape[0], input.shape[1], -1)


def forward(
    x: Tensor, weight: Tensor, bias: Tensor, tau: Tensor | None, eps: float | Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(y, r, below)`` for rows ``x`` of shape ``(N, C, m)``; ``r`` is ``(N, C, 1)``,
    ``below`` the mask ``z < tau`` (``None`` without ``tau``)."""
    _, c, m = x.shape
    dtype = x.dtype
    r = rstd_from_centred(x, m, as_dtype(eps, dtype) if isinstance(eps, Tensor) else eps)
    z = torch.addcmul(as_dtype(bias, dtype).view(c, 1), x, r * as_dtype(weight, dtype).view(c, 1))
    if tau is None:
        return z, r, None
    tau_c = as_dtype(tau, dtype).view(c, 1)
    below = torch.lt(z, tau_c)
    return torch.maximum(z, tau_c, out=z), r, below


def backward(
    dy: Tensor,
    x: Tensor,
    r: Tensor,
    below: Tensor | None,
    weight: Tensor,
    needs: tuple[bool, ...],
) -> Grads:
    """``(dx, dweight, dbias, dtau, deps)`` for rows ``(N, C, m)`` (``None`` where not
    needed; ``deps`` summed over all rows), in ``x``'s dtype."""
    need_x, need_w, need_b, need_tau, need_eps = needs
    m = x.shape[-1]
    g = dy if below is None else dy.masked_fill(below, 0)
    dbias = g.sum((0, 2)) if need_b or need_tau else None
    dtau = dy.sum((0, 2)).sub_(dbias) if need_tau else None
    if not (need_x or need_w or need_eps):
        return None, None, dbias, dtau, None
    row_sums = torch.linalg.vecdot(g, x).unsqueeze(-1)  # S, (N, C, 1)
    dweight = (r * row_sums).sum((0, 2)) if need_w else None
    a = r * as_dtype(weight, x.dtype).view(-1, 1)
    b = row_sums.mul_(r.square()).mul_(a).mul_(-1.0 / m)
    deps = b.sum() * (m / 2) if need_eps else None
    dx = None
    if need_x:
        dx = g.mul_(a) if g is not dy else g * a
        dx.addcmul_(x, b)
    return dx, dweight, dbias, dtau, deps


class FilterResponseFunction(torch.autograd.Function):
    """``(closed_form, input, weight, bias, tau, eps) -> max(weight * x * r + bias, tau)``.

    ``input``: rows ``(N, C, m)`` in their computation dtype (the caller reshapes and
    converts); ``eps`` a float or a one-element tensor. ``closed_form(dy, input, weight,
    bias, tau, eps)`` is called with the rows. Gradients are returned in the shapes and
    dtypes of the arguments. Written with ``ctx`` in ``forward``: it never runs under
    ``torch.func`` (the plain formula does).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        closed_form: ClosedForm,
        input: Tensor,
        weight: Tensor,
        bias: Tensor,
        tau: Tensor | None,
        eps: float | Tensor,
    ) -> Tensor:
        out, r, below = forward(input, weight, bias, tau, eps)
        ctx.set_materialize_grads(False)
        eps_tensor = eps if isinstance(eps, Tensor) else None
        ctx.save_for_backward(input, r, below, weight, bias, tau, eps_tensor)
        ctx.eps, ctx.closed_form = eps, closed_form
        return out

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if dy is None:
            return (None,) * 6
        x, r, below, weight, bias, tau, eps_tensor = ctx.saved_tensors
        eps = ctx.eps if eps_tensor is None else eps_tensor
        if torch.is_grad_enabled():  # a graph of the backward: the differentiable closed form
            grads = ctx.closed_form(dy, x, weight, bias, tau, eps)
        else:
            needs = tuple(ctx.needs_input_grad[1:6])
            grads = backward(dy.to(x.dtype), x, r, below, weight, needs)
        params = (x, weight, bias, tau, eps_tensor)
        shaped = (
            None if g is None or p is None else as_layout(g, p.shape, p.dtype)
            for g, p in zip(grads, params, strict=True)
        )
        return (None, *shaped)
