"""Group normalization (Wu & He, 2018): the formula, its backward, ``group_norm``.

The ``C`` channels of an input ``(N, C, *)`` are split into ``G`` groups of ``C / G``;
each sample's group, ``S = C / G * prod(*)`` values, is normalised as one row of layer
norm (:mod:`normlab.functional.layernorm`), and the affine parameters are per channel::

    mean = sum(x) / S            var = sum((x - mean)^2) / S              (biased)
    xhat = (x - mean) * rstd     rstd = rsqrt(var + eps)
    y    = xhat * weight_c + bias_c                 weight, bias: (C,)

The backward in closed form, with ``g = dy * weight_c`` and means over the group::

    dx      = rstd * (g - mean(g) - xhat * mean(g * xhat))
    dweight = sum over samples and positions of dy * xhat     dbias = the same of dy

:func:`forward` and :func:`backward` are these formulas as differentiable tensor
operations; :func:`group_norm` runs them under ``torch.func`` (and differentiates the
backward for higher derivatives). Under ``torch.compile`` it runs the forward with the
closed-form backward from its saved statistics (:class:`_CompiledFormula`), and a compiled
graph on the CPU (float32, float64) of a large input calls normlab's operator
``torch.ops.normlab.group_norm`` instead.
Eagerly it runs a fast path through :mod:`normlab.functional._autograd`
(:mod:`normlab.functional._fast.groupnorm`: normlab's kernels, or in-place tensor
arithmetic), the common call recognised by one short check before the full ones. float16 /
bfloat16 inputs: statistics and arithmetic in float32, output in the input's dtype. Errors
are torch's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.errors import UsageError
from normlab.functional._common import (
    ShapeError,
    as_dtype,
    check_floating,
    check_param_dtypes,
    compute_dtype,
)
from normlab.functional._fast import groupnorm as fast
from normlab.functional._fast.layernorm import compiled_ops
from normlab.functional.layernorm import standardize

# ---------------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------------


def forward(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """``y = xhat * weight_c + bias_c``, ``xhat`` standardised per (sample, group)."""
    n, c = input.shape[:2]
    group_size = c // num_groups * math.prod(input.shape[2:])
    x = input.to(compute_dtype(input.dtype)).reshape(n, num_groups, group_size)
    out = standardize(x, eps)[0].reshape(input.shape)
    per_channel = (c,) + (1,) * (input.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(per_channel)
    if bias is not None:
        out = out + bias.reshape(per_channel)
    return out.to(input.dtype)


def backward(
    grad_out: Tensor, input: Tensor, num_groups: int, weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form ``(dx, dweight, dbias)``, statistics recomputed from ``input``.

    Differentiable: a double backward differentiates it, the statistics' dependence on
    ``x`` included.
    """
    n, c = input.shape[:2]
    dtype = compute_dtype(input.dtype)
    xhat, rstd = standardize(input.to(dtype).reshape(n, num_groups, -1), eps)
    dy = grad_out.to(dtype).reshape(n, c, -1)
    g = dy if weight is None else dy * weight.to(dtype).view(c, 1)
    g = g.reshape(xhat.shape)
    dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    dweight = (dy * xhat.reshape(dy.shape)).sum((0, 2))
    return dx.reshape(input.shape).to(input.dtype), dweight, dy.sum((0, 2))


def _grouped(t: Tensor, num_groups: int, dtype: torch.dtype) -> Tensor:
    """``(N, C, *)`` viewed as ``(N, G, C / G, prod(*))``, in ``dtype``."""
    n, c = t.shape[:2]
    return as_dtype(t, dtype).reshape(n, num_groups, c // num_groups, math.prod(t.shape[2:]))


def _shifted_forward(
    input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`forward`'s ``y`` and the ``(N, G, 1, 1)`` statistics ``offset`` and ``rstd``.

    Each group is shifted by its first value, ``v = x - x[n, g, 0, 0]``, and Welford's
    ``var_mean`` of ``v`` (one pass) gives ``offset = E[v]`` and the variance: float32
    keeps its accuracy for inputs far from zero. ``xhat = (v - offset) * rstd`` is
    recomputed from them exactly by :class:`_CompiledFormula`'s backward, and
    ``y = (v - offset) * scale + bias_c`` with ``scale = rstd * weight_c`` per (sample,
    channel).
    """
    x = _grouped(input, num_groups, compute_dtype(input.dtype))
    v = x - x[:, :, :1, :1]
    var, offset = torch.var_mean(v, (2, 3), correction=0, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    groups, per_group = x.shape[1], x.shape[2]
    scale = rstd if weight is None else rstd * weight.reshape(groups, per_group, 1)
    y = (v - offset) * scale
    if bias is not None:
        y = y + bias.reshape(groups, per_group, 1)
    return as_dtype(y.reshape(input.shape), input.dtype), offset, rstd


class _CompiledFormula(torch.autograd.Function):
    """``(input, num_groups, weight, bias, eps) -> (y, offset, rstd)``: the formula
    (:func:`_shifted_forward`) with the closed-form backward from its saved ``(N, G, 1, 1)``
    statistics, what ``torch.compile`` runs. Inductor then fuses one pass over ``dy`` and
    ``x`` for the sums of each (sample, channel) and one for ``dx``, where differentiating
    :func:`forward` (two means, the shift) takes more. Not differentiable twice
    (``torch.compile`` has no double backward); ``torch.func`` transforms differentiate
    :func:`forward` itself.

    With ``c = x - x[n, g, 0, 0] - offset`` (so ``xhat = c * rstd``) and, per (sample,
    channel), ``s = sum(dy)`` and ``t = sum(dy * c)`` over its positions; per group of
    ``S`` values ``m1 = sum_c(weight_c * s) / S`` (the mean of ``g = dy * weight``) and
    ``m2 = rstd * sum_c(weight_c * t) / S`` (the mean of ``g * xhat``)::

        dx = dy * (rstd * weight_c) - c * (rstd^2 * m2) - rstd * m1
        dweight = sum over samples of rstd * t          dbias = sum over samples of s
    """

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`_shifted_forward`, whose statistics the backward reads."""
        return _shifted_forward(input, num_groups, weight, bias, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, num_groups, weight, bias, _ = inputs
        _, offset, rstd = output
        ctx.mark_non_differentiable(offset, rstd)
        ctx.save_for_backward(input, weight, offset, rstd)
        ctx.num_groups = num_groups
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, weight, offset, rstd = ctx.saved_tensors
        x = _grouped(input, ctx.num_groups, rstd.dtype)
        dy = _grouped(grad_out, ctx.num_groups, rstd.dtype)
        groups, per_group = x.shape[1], x.shape[2]
        shifted = x - x[:, :, :1, :1]  # x - mean = shifted - offset
        s = dy.sum(3, keepdim=True)  # (N, G, C / G, 1)
        t = (dy * shifted).sum(3, keepdim=True) - offset * s
        w = None if weight is None else as_dtype(weight, rstd.dtype).reshape(groups, per_group, 1)
        ws, wt = (s, t) if w is None else (s * w, t * w)
        size = per_group * x.shape[3]  # values per group
        m1 = ws.sum(2, keepdim=True) * (1.0 / size)  # products: no division per value
        m2 = wt.sum(2, keepdim=True) * (rstd * (1.0 / size))
        scale = rstd if w is None else rstd * w
        k2 = rstd * rstd * m2
        dx = dy * scale - shifted * k2 + (offset * k2 - rstd * m1)
        dweight = None if weight is None else as_dtype((t * rstd).sum(0).reshape(-1), weight.dtype)
        dbias = None if ctx.bias_dtype is None else as_dtype(s.sum(0).reshape(-1), ctx.bias_dtype)
        return as_dtype(dx.reshape(input.shape), input.dtype), None, dweight, dbias, None


# ---------------------------------------------------------------------------------------------
# Public API: torch.nn.functional's signature
# ---------------------------------------------------------------------------------------------


def _check_group_norm(
    input: Tensor,
    num_groups: Any,
    weight: Tensor | None,
    bias: Tensor | None,
) -> None:
    if not isinstance(num_groups, int) or isinstance(num_groups, bool):
        raise TypeError(
            "group_norm(): argument 'num_groups' (position 2) must be int, "
            f"not {type(num_groups).__name__}"
        )
    if input.dim() < 2:
        raise ShapeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    if num_groups <= 0:
        raise ShapeError(f"Expected num groups to be greater than 0, got {num_groups}")
    n, c = input.shape[:2]
    size = [n * c // num_groups, num_groups, *input.shape[2:]]
    if size[0] * math.prod(size[2:]) == 1:  # one value per group of each sample
        raise UsageError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )
    if c % num_groups != 0:
        raise ShapeError(
            "Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {list(input.shape)} and num_groups={num_groups}"
        )
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and (param.dim() != 1 or param.numel() != c):
            raise ShapeError(
                f"Expected {name} to be a vector of size equal to the number of channels in "
                f"input, but got {name} of shape {list(param.shape)} and input of shape "
                f"{list(input.shape)}"
            )


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalization: statistics per sample over groups of ``C / num_groups`` channels.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight_c + bias_c``, mean and biased variance
    over the channels of a group and all their positions, for each sample.

    Args:
        input: ``(N, C, *)``, floating point.
        num_groups: G, must divide C.
        weight, bias: optional, shape ``(C,)``.
        eps: added to the variance. Default: 1e-5.

    Shape:
        output has the shape and dtype of ``input``.

    Example:
        >>> y = group_norm(torch.randn(8, 6, 10, 10), 3)
    """
    if not torch.compiler.is_compiling():  # a compiled graph guards on less without it
        operator = fast.operator_for(input, num_groups, weight, bias)
        if operator is not None:  # the common case, checked in one go
            return operator(input, num_groups, weight, bias, eps)
    check_floating(input, "group_norm")
    _check_group_norm(input, num_groups, weight, bias)
    check_param_dtypes(input, (weight, bias), "group_norm")
    if torch.compiler.is_compiling() or not _autograd.eager(input):  # compiling: fewer guards
        group_size = input.shape[1] // num_groups * math.prod(input.shape[2:])
        ops = compiled_ops(input, group_size, weight, bias)
        if ops is not None:  # torch.compile on the CPU: the operator, one call each way
            return ops.group_norm(input, num_groups, weight, bias, eps)
        if input.numel() == 0 or torch._C._are_functorch_transforms_active():
            return forward(input, num_groups, weight, bias, eps)  # torch.func: the formula
        out: Tensor = _CompiledFormula.apply(input, num_groups, weight, bias, eps)[0]
        return out  # torch.compile: the formula with its closed-form backward
    return _autograd.run(
        fast.fast_path(input, num_groups, weight, bias, eps),
        lambda dy, x, w: backward(dy, x, num_groups, w, eps),
        input,
        weight,
        bias,
    )
