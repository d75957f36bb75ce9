"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le, 2020): normalization and activation
in one layer, found by an evolutionary search over computation graphs.

B0 divides by the larger of the batch's standard deviation and a learned linear response
plus the instance's standard deviation (per channel; biased variances)::

    y = x / max(sqrt(var_batch + eps), v * x + sqrt(var_instance + eps)) * weight + bias

with ``var_batch`` over ``(N, H, W)`` per channel in training, and a running variance
(updated with the unbiased batch variance, ``momentum`` the weight of the batch, as batch
norm's) in evaluation; ``var_instance`` over ``(H, W)`` per sample and channel.

S0 is batch-independent: a SiLU-like gate ``x * sigmoid(v * x)`` over the group's standard
deviation (over ``(C / groups, H, W)`` per sample, as group norm)::

    y = x * sigmoid(v * x) / sqrt(var_group + eps) * weight + bias

The backwards in closed form, with sums over a row (one sample and channel, ``m``
positions) or over the batch (``N`` rows per channel). B0, with
``den = max(sb, v * x + si)`` (``sb``, ``si`` the two standard deviations, ``mub``, ``mu``
the means), ``I`` the mask of the instance branch ``v * x + si > sb`` (a tie counts as the
batch's) and ``E = dy * x / den^2``::

    dx = w * dy / den - w * v * I * E
         - (x - mu)  * w * sum_row(I * E) / (m * si)
         - (x - mub) * w * sum_batch((1 - I) * E) / (N * m * sb)       (training only)
    dv = -sum(w * I * E * x)      dweight = sum(dy * x / den)      dbias = sum(dy)

S0, with ``s = sigmoid(v * x)``, ``r = (var_group + eps)^(-1/2)`` and ``mu`` per sample and
group of ``M`` values, ``P = sum_row(dy * x * s)``::

    dx = w * r * dy * (s + v * x * s * (1 - s)) - (x - mu) * r^3 / M * sum_group(w * P)
    dv = sum(w * r * dy * x^2 * s * (1 - s))   dweight = sum_N(r * P)   dbias = sum(dy)

How they are computed: :func:`b0_forward`, :func:`b0_backward`, :func:`s0_forward` and
:func:`s0_backward` are these formulas as differentiable tensor operations (``torch.var``,
two-pass, stable far from zero); :func:`evonorm_b0` and :func:`evonorm_s0` run the
forwards under ``torch.func`` and B0's under ``torch.compile`` (which differentiate them
themselves); under ``torch.compile`` S0 traces :func:`s0_forward` with :func:`s0_backward`
as its backward (one ``autograd.Function``: the closed form compiles to less work than
autograd of the formula). Eagerly, from :data:`B0_FUNCTION_MIN_ELEMENTS` and
:data:`S0_FUNCTION_MIN_ELEMENTS` elements on, each runs one ``autograd.Function``
(:mod:`normlab.functional._fast.evonorm`): shifted two-pass statistics, the closed-form
backward in place on tensors, and the differentiable backward when a graph of the
backward is wanted; smaller inputs run the plain formula under autograd, whose C++ nodes
cost less than the Function's Python there. float16 / bfloat16 inputs: arithmetic in
float32, output in the input's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.functional._common import as_dtype, as_layout, compute_dtype, per_channel_as
from normlab.functional._fast import evonorm as fast

_LOW_PRECISION = (torch.float16, torch.bfloat16)

#: Below these many elements the plain formulas run eagerly too: where a call's fixed cost
#: outweighs its arithmetic, autograd's C++ nodes for the formula cost less than one Python
#: ``autograd.Function`` (measured with ``normlab bench layers --shapes tiny,lenet``).
B0_FUNCTION_MIN_ELEMENTS = 1 << 10
S0_FUNCTION_MIN_ELEMENTS = 1 << 12


def _compute_dtype(input: Tensor) -> torch.dtype:
    return torch.float32 if input.dtype in _LOW_PRECISION else input.dtype


def _check_input(input: Tensor, fn: str) -> None:
    if input.dim() < 3:
        raise ValueError(
            f"{fn}: expected input of shape (N, C, *) with spatial dimensions "
            f"(got {input.dim()}D input); view features as (N, C, 1, 1)"
        )


def _empty(input: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """An input without elements: an empty output, still connected to the affine, and no
    statistics (nor running variance) touched."""
    ndim = input.dim()
    w, b = per_channel_as(weight, ndim, input.dtype), per_channel_as(bias, ndim, input.dtype)
    return input * w + b


def check_groups(num_features: int, groups: object) -> None:
    """``groups`` a positive ``int`` dividing ``num_features``, else ``ValueError``."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if num_features % groups:
        raise ValueError(f"num_features ({num_features}) must be divisible by groups ({groups})")


def _spatial(ndim: int) -> tuple[int, ...]:
    return tuple(range(2, ndim))


def _records_graph(*tensors: Tensor) -> bool:
    """Whether autograd records this call: grad mode on and some tensor requires grad."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------------------------
# EvoNorm-B0: the formula and its backward
# ---------------------------------------------------------------------------------------------


def _denominator(x: Tensor, v: Tensor, batch_var: Tensor, eps: float) -> Tensor:
    """``max(sqrt(batch_var + eps), v * x + sqrt(var_HW + eps))`` as
    ``clamp(batch_std, min=instance)``: a tie takes the batch branch (as the closed form),
    NaN is kept."""
    ndim = x.dim()
    instance_std = (x.var(_spatial(ndim), correction=0, keepdim=True) + eps).sqrt()
    instance = per_channel_as(v, ndim, x.dtype) * x + instance_std
    batch_std = (batch_var + eps).sqrt()
    return torch.clamp(batch_std, min=instance)


def _batch_var(x: Tensor) -> Tensor:
    return x.var((0, *_spatial(x.dim())), correction=0, keepdim=True)


def b0_forward(
    input: Tensor,
    running_var: Tensor,
    weight: Tensor,
    bias: Tensor,
    v: Tensor,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """EvoNorm-B0 as tensor operations (``running_var`` updated in training), in the
    computation dtype, output in ``input``'s dtype."""
    dtype, ndim = _compute_dtype(input), input.dim()
    x = as_dtype(input, dtype)
    if training:
        var_batch = _batch_var(x)
        with torch.no_grad():
            n = x.numel() // x.shape[1]
            unbiased = var_batch.reshape(-1) * (n / (n - 1))
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)
    else:
        var_batch = per_channel_as(running_var, ndim, dtype)
    y = x / _denominator(x, v, var_batch, eps) * per_channel_as(weight, ndim, dtype)
    return as_dtype(y + per_channel_as(bias, ndim, dtype), input.dtype)


def b0_backward(
    grad_out: Tensor,
    input: Tensor,
    weight: Tensor,
    v: Tensor,
    running_var: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Closed-form ``(dx, dweight, dbias, dv)`` in the shapes and dtypes of the arguments;
    ``running_var`` ``None`` in training (the batch's statistics, recomputed from
    ``input``). Differentiable, for higher derivatives."""
    dtype, ndim = _compute_dtype(input), input.dim()
    x, dy = as_dtype(input, dtype), as_dtype(grad_out, dtype)
    spatial, reduced = _spatial(ndim), (0, *_spatial(ndim))
    m = math.prod(x.shape[2:])
    w, v_c = per_channel_as(weight, ndim, dtype), per_channel_as(v, ndim, dtype)
    training = running_var is None
    var_batch = _batch_var(x) if training else per_channel_as(running_var, ndim, dtype)
    den = _denominator(x, v, var_batch, eps)
    batch_std = (var_batch + eps).sqrt()
    instance_std = (x.var(spatial, correction=0, keepdim=True) + eps).sqrt()
    e = dy * x / den.square()
    e_instance = torch.where(den > batch_std, e, 0.0)
    dx = w * dy / den - w * v_c * e_instance
    instance_mean = x.mean(spatial, keepdim=True)
    dx = dx - (x - instance_mean) * w * e_instance.sum(spatial, keepdim=True) / (m * instance_std)
    if training:
        batch_mean = x.mean(reduced, keepdim=True)
        e_batch = (e - e_instance).sum(reduced, keepdim=True)
        dx = dx - (x - batch_mean) * w * e_batch / (x.shape[0] * m * batch_std)
    dv = -(w * e_instance * x).sum(reduced)
    return (
        as_dtype(dx, input.dtype),
        as_dtype((dy * x / den).sum(reduced), weight.dtype),
        as_dtype(dy.sum(reduced), weight.dtype),
        as_dtype(dv, v.dtype),
    )


def evonorm_b0(
    input: Tensor,
    running_var: Tensor,
    weight: Tensor,
    bias: Tensor,
    v: Tensor,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""EvoNorm-B0 of ``(N, C, *)`` (see the module docstring).

    .. math::
        y = \frac{x}{\max\left(\sqrt{\mathrm{Var}_{N,HW}[x] + \epsilon},\;
        v x + \sqrt{\mathrm{Var}_{HW}[x] + \epsilon}\right)} \gamma + \beta

    Args:
        input: ``(N, C, *)`` with at least one spatial dimension.
        running_var: ``(C,)``; read in evaluation, updated in place in training.
        weight, bias, v: ``(C,)`` parameters :math:`\gamma`, :math:`\beta`, :math:`v`.
        training: batch variance (and update ``running_var``). Default: ``False``.
        momentum: weight of the batch in ``running_var``. Default: 0.1.
        eps: added to both variances. Default: 1e-5.

    Shape:
        input ``(N, C, *)``, output the same shape and dtype.

    Example:
        >>> x, c = torch.randn(4, 3, 5, 5), torch.ones(3)
        >>> evonorm_b0(x, c.clone(), c, torch.zeros(3), c, training=True).shape
        torch.Size([4, 3, 5, 5])
    """
    _check_input(input, "evonorm_b0")
    if input.numel() == 0:
        return _empty(input, weight, bias)
    if training and input.numel() == input.shape[1]:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {input.size()}"
        )
    if input.numel() < B0_FUNCTION_MIN_ELEMENTS or not _autograd.eager(input):
        return b0_forward(input, running_var, weight, bias, v, training, momentum, eps)
    rows = fast.rows_of(as_dtype(input, compute_dtype(input.dtype)))
    if _records_graph(rows, weight, bias, v):
        out = fast.EvoNormB0Function.apply(
            b0_backward, rows, weight, bias, v, running_var, training, momentum, eps
        )
    else:
        stats = fast.b0_statistics(rows, running_var, training, momentum, eps)
        out = fast.b0_forward(rows, weight, bias, v, stats)[0]
    return as_layout(out, input.shape, input.dtype)


# ---------------------------------------------------------------------------------------------
# EvoNorm-S0: the formula and its backward
# ---------------------------------------------------------------------------------------------


def _group_statistics(x: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """Per sample and group: mean and ``(var + eps)^(-1/2)``, each expanded to ``(N, C)``
    and viewed as ``(N, C, 1, ...)``."""
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    var, mean = torch.var_mean(grouped, -1, correction=0, keepdim=True)
    return _perper_channel_as(mean, c, x.dim()), _perper_channel_as((var + eps).rsqrt(), c, x.dim())


def _perper_channel_as(t: Tensor, channels: int, ndim: int) -> Tensor:
    """``(N, G, 1)`` per group as ``(N, C, 1, ...)`` per channel."""
    n, groups = t.shape[:2]
    expanded = t.expand(n, groups, channels // groups).reshape(n, channels)
    return expanded.reshape(n, channels, *[1] * (ndim - 2))


def s0_forward(
    input: Tensor, weight: Tensor, bias: Tensor, v: Tensor, groups: int, eps: float
) -> Tensor:
    """EvoNorm-S0 as tensor operations, in the computation dtype, output in ``input``'s
    dtype."""
    dtype, ndim = _compute_dtype(input), input.dim()
    x = as_dtype(input, dtype)
    grouped = x.reshape(x.shape[0], groups, -1)
    group_std = (grouped.var(-1, correction=0, keepdim=True) + eps).sqrt()
    gate = x * torch.sigmoid(per_channel_as(v, ndim, dtype) * x)
    y = gate / _perper_channel_as(group_std, x.shape[1], ndim) * per_channel_as(weight, ndim, dtype)
    return as_dtype(y + per_channel_as(bias, ndim, dtype), input.dtype)


def s0_backward(
    grad_out: Tensor, input: Tensor, weight: Tensor, v: Tensor, groups: int, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Closed-form ``(dx, dweight, dbias, dv)`` in the shapes and dtypes of the arguments,
    statistics recomputed from ``input``; differentiable, for higher derivatives."""
    dtype, ndim = _compute_dtype(input), input.dim()
    x, dy = as_dtype(input, dtype), as_dtype(grad_out, dtype)
    n, c = x.shape[:2]
    spatial, reduced = _spatial(ndim), (0, *_spatial(ndim))
    count = x.numel() // (n * groups)
    mean, rstd = _group_statistics(x, groups, eps)
    w, v_c = per_channel_as(weight, ndim, dtype), per_channel_as(v, ndim, dtype)
    s = torch.sigmoid(v_c * x)
    gate_sums = (dy * x * s).sum(spatial)  # P, (N, C)
    group_sums = (gate_sums * as_dtype(weight, dtype)).reshape(n, groups, -1).sum(-1, keepdim=True)
    k = _perper_channel_as(group_sums, c, ndim) * rstd.pow(3) / count
    q = w * rstd
    slope = dy * x * s * (1 - s)
    dx = q * (dy * s + v_c * slope) - (x - mean) * k
    rstd_c = rstd.reshape(n, c)
    return (
        as_dtype(dx, input.dtype),
        as_dtype((rstd_c * gate_sums).sum(0), weight.dtype),
        as_dtype(dy.sum(reduced), weight.dtype),
        as_dtype((q * slope * x).sum(reduced), v.dtype),
    )


class _CompiledS0(torch.autograd.Function):
    """:func:`s0_forward` with :func:`s0_backward` as its backward: what ``torch.compile``
    traces for S0 (the closed form compiles to fewer passes than autograd of the formula);
    ``torch.func`` transforms see the plain formula."""

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor, weight: Tensor, bias: Tensor, v: Tensor, groups: int, eps: float
    ) -> Tensor:
        return s0_forward(input, weight, bias, v, groups, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        input, weight, _, v, groups, eps = inputs
        ctx.save_for_backward(input, weight, v)
        ctx.groups, ctx.eps = groups, eps

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, weight, v = ctx.saved_tensors
        dx, dweight, dbias, dv = s0_backward(dy, input, weight, v, ctx.groups, ctx.eps)
        return dx, dweight, dbias, dv, None, None


def evonorm_s0(
    input: Tensor, weight: Tensor, bias: Tensor, v: Tensor, groups: int, eps: float = 1e-5
) -> Tensor:
    r"""EvoNorm-S0 of ``(N, C, *)`` with ``groups`` groups of channels.

    .. math::
        y = \frac{x\,\sigma(v x)}{\sqrt{\mathrm{Var}_{group}[x] + \epsilon}} \gamma + \beta

    Args:
        input: ``(N, C, *)`` with at least one spatial dimension.
        weight, bias, v: ``(C,)`` parameters.
        groups: number of groups, dividing ``C``.
        eps: added to the group variance. Default: 1e-5.

    Shape:
        input ``(N, C, *)``, output the same shape and dtype.

    Example:
        >>> x, c = torch.randn(2, 4, 3, 3), torch.ones(4)
        >>> evonorm_s0(x, c, torch.zeros(4), c, groups=2).shape
        torch.Size([2, 4, 3, 3])
    """
    _check_input(input, "evonorm_s0")
    check_groups(input.shape[1], groups)
    if input.numel() == 0:
        return _empty(input, weight, bias)
    if not _autograd.eager(input):
        if torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active():
            return _CompiledS0.apply(input, weight, bias, v, groups, eps)
        return s0_forward(input, weight, bias, v, groups, eps)
    if input.numel() < S0_FUNCTION_MIN_ELEMENTS:
        return s0_forward(input, weight, bias, v, groups, eps)
    rows = fast.rows_of(as_dtype(input, compute_dtype(input.dtype)))
    if _records_graph(rows, weight, bias, v):
        out = fast.EvoNormS0Function.apply(s0_backward, rows, weight, bias, v, groups, eps)
    else:
        out = fast.s0_forward(rows, weight, bias, v, groups, eps)[0]
    return as_layout(out, input.shape, input.dtype)
