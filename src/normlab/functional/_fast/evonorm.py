"""EvoNorm-B0's and EvoNorm-S0's fast paths: the formulas of
:mod:`normlab.functional.evonorm` in place on tensors.

One ``autograd.Function`` per layer (:class:`EvoNormB0Function`,
:class:`EvoNormS0Function`) in place of the graph autograd records for the plain formula.
The input is seen as rows ``(N, C, m)``, ``m`` the number of spatial positions.

Statistics: each row (B0) or group (S0) is shifted by its first value (exact for values
close to each other), its mean taken from what is left, and its sum of squared deviations
computed as a squared 2-norm. B0's batch variance combines the rows' (Chan et al.'s
pairwise update): ``sum_N(M2_row) + m * sum_N(delta_row - mean_N(delta))^2`` with
``delta_row`` the row's mean relative to the channel's first value, so no large mean is
ever squared.

B0, with ``den = max(sb, v * x + si)``, ``E = dy * x / den^2``, ``I`` the mask
``den > sb`` (the instance branch), ``mu``, ``si`` per row and ``mub``, ``sb`` per channel
(training only: evaluation reads the running variance)::

    dx = w * dy / den - w * v * I * E
         - (x - mu)  * w * sum_row(I * E) / (m * si)
         - (x - mub) * w * sum_{N,row}((1 - I) * E) / (N * m * sb)
    dv = -w * sum(I * E * x)      dweight = sum(dy * x / den)      dbias = sum(dy)

The forward saves ``input`` and ``den``; the backward forms ``w * E`` as
``(dy * w) * (x / den) / den``, the order in which autograd of the formula rounds it: the
sums of ``dweight`` and ``dv`` over the batch cancel (terms of random sign, far larger
than the result), so their rounding errors are large relative to the result, and rounding
the terms alike keeps the two paths close. ``dx`` is assembled in the memory of
``dy * w``.

S0, with ``s = sigmoid(v * x)``, ``r`` and ``mu`` per (sample, group), ``q = w * r``,
``P = sum_row(dy * x * s)`` and ``K = r^3 / M * sum_{c in group}(w_c * P)``
(``M = C / groups * m``)::

    dx = q * dy * (s + v * x * s * (1 - s)) - (x - mu) * K
    dv = sum(q * dy * x^2 * s * (1 - s))  dweight = sum_N(r * P)  dbias = sum(dy)

The forward saves ``input`` and ``s``.

When a graph of the backward is wanted (``create_graph=True``) each calls the
differentiable closed form it was given instead, so higher derivatives are those of the
plain formula.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from normlab.functional._common import as_dtype, as_layout

Grads = tuple[Tensor | None, ...]
ClosedForm = Callable[..., Grads]


def rows_of(input: Tensor) -> Tensor:
    """``(N, C, *)`` viewed as ``(N, C, m)``, ``m`` spatial positions."""
    return input.reshape(input.shape[0], input.shape[1], -1)


def _channel(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A ``(C,)`` vector as ``(C, 1)``, broadcasting over rows ``(N, C, m)``."""
    return as_dtype(t, dtype).view(-1, 1)


@dataclass(frozen=True, slots=True)
class Moments:
    """Rows' statistics: ``first`` value, ``mean``, sum of squared deviations ``m2``
    (each ``(*, 1)``), and ``offset = mean - first`` (small, accurate)."""

    first: Tensor
    offset: Tensor
    m2: Tensor

    @property
    def mean(self) -> Tensor:
        return self.first + self.offset


def moments(rows: Tensor) -> Moments:
    """Mean and sum of squared deviations over the last dimension, shifted two-pass."""
    first = rows.narrow(-1, 0, 1)
    centred = rows - first
    offset = centred.mean(-1, keepdim=True)
    centred.sub_(offset)
    m2 = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square_()
    return Moments(first, offset, m2)


def _running_update(running_var: Tensor, var_batch: Tensor, count: int, momentum: float) -> None:
    """``running_var = (1 - momentum) * running_var + momentum * unbiased batch variance``."""
    unbiased = var_batch.reshape(-1) * (count / (count - 1))
    running_var.lerp_(unbiased.to(running_var.dtype), momentum)


# ---------------------------------------------------------------------------------------------
# EvoNorm-B0
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class B0Stats:
    """Per row ``(N, C, 1)``: ``mean``, ``std = sqrt(var + eps)``; per channel ``(1, C, 1)``:
    ``batch_mean`` (``None`` in evaluation) and ``batch_std``."""

    mean: Tensor
    std: Tensor
    batch_mean: Tensor | None
    batch_std: Tensor


def b0_statistics(
    x: Tensor, running_var: Tensor, training: bool, momentum: float, eps: float
) -> B0Stats:
    """The row and channel statistics of rows ``(N, C, m)``; in training the batch's, and
    ``running_var`` updated with them in place."""
    n, c, m = x.shape
    rows = moments(x)
    std = rows.m2.mul(1.0 / m).add_(eps).sqrt_()
    if not training:
        batch_std = (as_dtype(running_var, x.dtype).view(1, c, 1) + eps).sqrt()
        return B0Stats(rows.mean, std, None, batch_std)
    anchor = rows.first[:1]
    delta = (rows.first - anchor).add_(rows.offset)
    delta_mean = delta.mean(0, keepdim=True)
    spread = (delta - delta_mean).square_().sum(0, keepdim=True)
    var_batch = rows.m2.sum(0, keepdim=True).add_(spread, alpha=m).mul_(1.0 / (n * m))
    _running_update(running_var, var_batch, n * m, momentum)
    return B0Stats(rows.mean, std, anchor + delta_mean, var_batch.add_(eps).sqrt_())


def b0_forward(
    x: Tensor, weight: Tensor, bias: Tensor, v: Tensor, stats: B0Stats
) -> tuple[Tensor, Tensor]:
    """``(y, den)`` for rows ``(N, C, m)``: ``den = max(sb, v * x + si)``,
    ``y = x / den * weight + bias``."""
    dtype = x.dtype
    den = torch.addcmul(stats.std, x, _channel(v, dtype))
    torch.maximum(den, stats.batch_std, out=den)
    out = torch.div(x, den)
    return torch.addcmul(_channel(bias, dtype), out, _channel(weight, dtype), out=out), den


def b0_backward(
    dy: Tensor, x: Tensor, den: Tensor, weight: Tensor, v: Tensor, stats: B0Stats, needs: tuple
) -> Grads:
    """``(dx, dweight, dbias, dv)`` for rows ``(N, C, m)`` (``None`` where not needed)."""
    need_x, need_w, need_b, need_v = needs
    n, _, m = x.shape
    w = _channel(weight, x.dtype)
    dbias = dy.sum((0, 2)) if need_b else None
    ratio = torch.div(x, den)  # the forward's x / den, rounded alike
    product = torch.mul(dy, ratio)
    dweight = product.sum((0, 2)) if need_w else None
    if not (need_x or need_v):
        return None, dweight, dbias, None
    scaled = torch.mul(dy, w)
    e = ratio.div_(den).mul_(scaled)  # w * E = (dy * w) * (x / den) / den
    total = e.sum(-1, keepdim=True) if stats.batch_mean is not None else None
    e.mul_(den > stats.batch_std)  # the instance branch's share
    dv = torch.mul(e, x, out=product).sum((0, 2)).neg_() if need_v else None
    if not need_x:
        return None, dweight, dbias, dv
    instance_sum = e.sum(-1, keepdim=True)
    batch_sum = None if total is None else total.sub_(instance_sum).sum(0, keepdim=True)
    k = instance_sum.div_(stats.std).mul_(-1.0 / m)  # per row
    shift = k * stats.mean
    if stats.batch_mean is not None and batch_sum is not None:
        kb = batch_sum.div_(stats.batch_std).mul_(-1.0 / (n * m))
        k = k + kb
        shift.add_(kb * stats.batch_mean)
    dx = scaled.div_(den).addcmul_(e, _channel(v, x.dtype), value=-1.0)
    return dx.addcmul_(x, k).sub_(shift), dweight, dbias, dv


def _b0_fields(stats: B0Stats) -> tuple[Tensor | None, ...]:
    return stats.mean, stats.std, stats.batch_mean, stats.batch_std


class EvoNormB0Function(torch.autograd.Function):
    """``(closed_form, input, weight, bias, v, running_var, training, momentum, eps) -> y``.

    ``input``: rows ``(N, C, m)`` in their computation dtype (the caller reshapes and
    converts); ``running_var`` is read in evaluation and updated in training.
    ``closed_form(dy, input, weight, v, running_var, eps)`` is called with the rows, and
    ``running_var`` ``None`` in training (batch statistics). Gradients are returned in the
    shapes and dtypes of the arguments. Written with ``ctx`` in ``forward``: it never runs
    under ``torch.func`` (the plain formula does).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        closed_form: ClosedForm,
        input: Tensor,
        weight: Tensor,
        bias: Tensor,
        v: Tensor,
        running_var: Tensor,
        training: bool,
        momentum: float,
        eps: float,
    ) -> Tensor:
        stats = b0_statistics(input, running_var, training, momentum, eps)
        out, den = b0_forward(input, weight, bias, v, stats)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, den, weight, bias, v, *_b0_fields(stats))
        ctx.closed_form, ctx.eps = closed_form, eps
        ctx.running_var = None if training else running_var
        return out

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if dy is None:
            return (None,) * 9
        x, den, weight, bias, v, *fields = ctx.saved_tensors
        if torch.is_grad_enabled():  # a graph of the backward: the differentiable closed form
            grads = ctx.closed_form(dy, x, weight, v, ctx.running_var, ctx.eps)
        else:
            needs = tuple(ctx.needs_input_grad[1:5])
            grads = b0_backward(dy.to(x.dtype), x, den, weight, v, B0Stats(*fields), needs)
        shaped = (
            None if g is None else as_layout(g, p.shape, p.dtype)
            for g, p in zip(grads, (x, weight, bias, v), strict=True)
        )
        return (None, *shaped, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# EvoNorm-S0
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class S0Stats:
    """Per (sample, group) ``(N, G, 1)``: ``mean`` and ``rstd = (var + eps)^(-1/2)``."""

    mean: Tensor
    rstd: Tensor


def s0_forward(
    x: Tensor, weight: Tensor, bias: Tensor, v: Tensor, groups: int, eps: float
) -> tuple[Tensor, Tensor, S0Stats]:
    """``(y, s, stats)`` for rows ``(N, C, m)``: ``s = sigmoid(v * x)``,
    ``y = x * s * rstd * weight + bias``."""
    n, c, m = x.shape
    dtype = x.dtype
    grouped = moments(x.reshape(n, groups, -1))
    rstd = grouped.m2.mul(1.0 / (c // groups * m)).add_(eps).rsqrt_()
    s = torch.mul(x, _channel(v, dtype)).sigmoid_()
    scale = (rstd * as_dtype(weight, dtype).view(groups, -1)).view(n, c, 1)
    out = torch.mul(x, s)
    out = torch.addcmul(_channel(bias, dtype), out, scale, out=out)
    return out, s, S0Stats(grouped.mean, rstd)


def s0_backward(
    dy: Tensor,
    x: Tensor,
    s: Tensor,
    weight: Tensor,
    v: Tensor,
    groups: int,
    stats: S0Stats,
    needs: tuple,
) -> Grads:
    """``(dx, dweight, dbias, dv)`` for rows ``(N, C, m)`` (``None`` where not needed)."""
    need_x, need_w, need_b, need_v = needs
    n, c, m = x.shape
    dtype = x.dtype
    w = as_dtype(weight, dtype)
    dbias = dy.sum((0, 2)) if need_b else None
    rstd = stats.rstd.expand(n, groups, c // groups).reshape(n, c)  # per (sample, channel)
    buffer = torch.mul(x, s)
    gate_sums = torch.linalg.vecdot(dy, buffer)  # P, (N, C)
    dweight = (rstd * gate_sums).sum(0) if need_w else None
    if not (need_x or need_v):
        return None, dweight, dbias, None
    q = (rstd * w).unsqueeze(-1)  # (N, C, 1)
    slope = torch.addcmul(s, s, s, value=-1.0).mul_(x).mul_(dy)  # dy * x * s * (1 - s)
    dv = (q.squeeze(-1) * torch.linalg.vecdot(slope, x)).sum(0) if need_v else None
    if not need_x:
        return None, dweight, dbias, dv
    count = c // groups * m
    k = (gate_sums * w).view(n, groups, -1).sum(-1, keepdim=True)  # (N, G, 1)
    k.mul_(stats.rstd.pow(3)).mul_(1.0 / count)
    shift = (k * stats.mean).expand(n, groups, c // groups).reshape(n, c, 1)
    k = k.expand(n, groups, c // groups).reshape(n, c, 1)
    dx = torch.mul(dy, s, out=buffer).addcmul_(slope, _channel(v, dtype)).mul_(q)
    return dx.addcmul_(x, k, value=-1.0).add_(shift), dweight, dbias, dv


class EvoNormS0Function(torch.autograd.Function):
    """``(closed_form, input, weight, bias, v, groups, eps) -> y``.

    ``input``: rows ``(N, C, m)`` in their computation dtype (the caller reshapes and
    converts). ``closed_form(dy, input, weight, v, groups, eps)`` is called with the rows.
    Gradients are returned in the shapes and dtypes of the arguments. Written with ``ctx``
    in ``forward``: it never runs under ``torch.func`` (the plain formula does).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        closed_form: ClosedForm,
        input: Tensor,
        weight: Tensor,
        bias: Tensor,
        v: Tensor,
        groups: int,
        eps: float,
    ) -> Tensor:
        out, s, stats = s0_forward(input, weight, bias, v, groups, eps)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, s, weight, bias, v, stats.mean, stats.rstd)
        ctx.closed_form, ctx.groups, ctx.eps = closed_form, groups, eps
        return out

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if dy is None:
            return (None,) * 7
        x, s, weight, bias, v, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # a graph of the backward: the differentiable closed form
            grads = ctx.closed_form(dy, x, weight, v, ctx.groups, ctx.eps)
        else:
            needs = tuple(ctx.needs_input_grad[1:5])
            stats = S0Stats(mean, rstd)
            grads = s0_backward(dy.to(x.dtype), x, s, weight, v, ctx.groups, stats, needs)
        shaped = (
            None if g is None else as_layout(g, p.shape, p.dtype)
            for g, p in zip(grads, (x, weight, bias, v), strict=True)
        )
        return (None, *shaped, None, None)
