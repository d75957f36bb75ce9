"""Layer normalization (Ba et al., 2016): the formula, its backward, ``layer_norm``.

Every row ``x`` of the input, its last ``D = prod(normalized_shape)`` values, is
normalised on its own::

    mean = sum(x) / D            var = sum((x - mean)^2) / D              (biased)
    xhat = (x - mean) * rstd     rstd = rsqrt(var + eps)
    y    = xhat * weight + bias                     weight, bias: normalized_shape

The backward in closed form, with ``g = dy * weight`` and means over the row::

    dx      = rstd * (g - mean(g) - xhat * mean(g * xhat))
    dweight = sum over rows of dy * xhat            dbias = sum over rows of dy

:func:`forward` and :func:`backward` are these formulas as differentiable tensor
operations; :func:`layer_norm` runs them under ``torch.func`` (and differentiates the
backward for higher derivatives). Under ``torch.compile`` it runs the forward with the
closed-form backward from its saved statistics (:class:`_CompiledFormula`), and a compiled
graph on the CPU (float32, float64) of a large input calls normlab's operator
``torch.ops.normlab.layer_norm`` instead.
Eagerly it runs a fast path through :mod:`normlab.functional._autograd`
(:mod:`normlab.functional._fast.layernorm`: normlab's kernels, or in-place tensor
arithmetic); the common call, the CPU operator with valid arguments, is recognised by one
short check before the full ones (:func:`normlab.functional._fast.layernorm.operator_for`).
The statistics are per row, so training and evaluation compute the same thing and there are
no running buffers. float16 / bfloat16 inputs: statistics and arithmetic in float32, output
in the input's dtype. Errors are torch's (:class:`~normlab.functional.ShapeError` where
torch raises ``RuntimeError``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.functional._common import (
    as_dtype,
    check_floating,
    check_normalized_shape,
    check_param_dtypes,
    compute_dtype,
)
from normlab.functional._fast import layernorm as fast
from normlab.functional._fast.layernorm import compiled_ops

# ---------------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------------


def standardize(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(xhat, rstd)`` over the last dimension of ``x`` (``rstd`` keeps it, of size 1).

    The row is shifted by its first value before the mean is taken: exact for values close
    to each other, and what is left has a small mean, so an input far from zero (mean 1e4,
    std 1e-2) keeps float32's accuracy, where subtracting the rounded mean, as ``torch.nn``
    does, loses most of its digits (the errors against float64 are in
    ``docs/results/parity.md``).
    """
    centred = x - x[..., :1]
    centred = centred - centred.mean(dim=-1, keepdim=True)
    rstd = torch.rsqrt(centred.square().mean(dim=-1, keepdim=True) + eps)
    return centred * rstd, rstd


def forward(
    input: Tensor,
    shape: tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """``y = xhat * weight + bias`` over the trailing ``shape`` of ``input``."""
    batch = input.shape[: input.dim() - len(shape)]
    x = input.to(compute_dtype(input.dtype)).reshape(*batch, math.prod(shape))
    out = standardize(x, eps)[0].reshape(input.shape)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out.to(input.dtype)


def backward(
    grad_out: Tensor, input: Tensor, shape: tuple[int, ...], weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form ``(dx, dweight, dbias)``, statistics recomputed from ``input``.

    ``dweight`` and ``dbias`` come as ``(D,)`` vectors. Differentiable: a double backward
    differentiates it, the statistics' dependence on ``x`` included.
    """
    width = math.prod(shape)
    dtype = compute_dtype(input.dtype)
    xhat, rstd = standardize(input.to(dtype).reshape(-1, width), eps)
    dy = grad_out.to(dtype).reshape(-1, width)
    g = dy if weight is None else dy * weight.to(dtype).reshape(width)
    dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    return dx.reshape(input.shape).to(input.dtype), (dy * xhat).sum(0), dy.sum(0)


def _shifted_forward(
    input: Tensor, shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`forward`'s ``y`` over the trailing ``shape``, rows of ``D = prod(shape)``
    values, and the ``(R, 1)`` statistics ``offset`` and ``rstd`` of the ``R`` rows.

    Each row is shifted by its first value, ``v = x - x[r, 0]``, and Welford's ``var_mean``
    of ``v`` (one pass) gives ``offset = E[v]`` and the variance: float32 keeps its
    accuracy for inputs far from zero. ``y = (v - offset) * rstd * weight + bias``, and
    :class:`_CompiledFormula`'s backward recomputes ``xhat = (v - offset) * rstd`` exactly.
    """
    width = math.prod(shape)
    x = as_dtype(input, compute_dtype(input.dtype)).reshape(-1, width)
    v = x - x[:, :1]
    var, offset = torch.var_mean(v, -1, correction=0, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    y = (v - offset) * rstd
    if weight is not None:
        y = y * weight.reshape(width)
    if bias is not None:
        y = y + bias.reshape(width)
    return as_dtype(y.reshape(input.shape), input.dtype), offset, rstd


class _CompiledFormula(torch.autograd.Function):
    """``(input, shape, weight, bias, eps) -> (y, offset, rstd)``: the formula over the
    trailing ``shape`` (:func:`_shifted_forward`) with the closed-form backward from its saved
    ``(R, 1)`` statistics, what ``torch.compile`` runs below the operators' size. Inductor
    then fuses one pass over ``dy`` and ``x`` for the row sums and one for ``dx`` (and the
    column sums of ``dweight``, ``dbias``), where differentiating :func:`forward` (two
    means, the shift) takes more. Not differentiable twice (``torch.compile`` has no double
    backward); ``torch.func`` transforms differentiate :func:`forward` itself.

    With ``c = x - x[r, 0] - offset`` (so ``xhat = c * rstd``), ``g = dy * weight`` and the
    row means ``m1 = mean(g)``, ``m2 = rstd * mean(g * c)`` (that of ``g * xhat``)::

        dx = g * rstd - c * (rstd^2 * m2) - rstd * m1
        dweight = sum over rows of dy * c * rstd        dbias = sum over rows of dy
    """

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor,
        shape: tuple[int, ...],
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`_shifted_forward`, whose statistics the backward reads."""
        return _shifted_forward(input, shape, weight, bias, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, shape, weight, bias, _ = inputs
        _, offset, rstd = output
        ctx.mark_non_differentiable(offset, rstd)
        ctx.save_for_backward(input, weight, offset, rstd)
        ctx.shape = shape
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, weight, offset, rstd = ctx.saved_tensors
        shape = ctx.shape
        width = math.prod(shape)
        x = as_dtype(input, rstd.dtype).reshape(-1, width)
        dy = as_dtype(grad_out, rstd.dtype).reshape(-1, width)
        centred = x - x[:, :1] - offset  # x - mean, as the forward
        w = None if weight is None else as_dtype(weight, rstd.dtype).reshape(width)
        g = dy if w is None else dy * w
        inverse_width = 1.0 / width  # products: no division per value
        m1 = g.sum(-1, keepdim=True) * inverse_width
        m2 = (g * centred).sum(-1, keepdim=True) * (rstd * inverse_width)
        dx = g * rstd - centred * (rstd * rstd * m2) - rstd * m1
        dweight = None
        if weight is not None:
            dweight = as_dtype((dy * centred * rstd).sum(0).reshape(shape), weight.dtype)
        dbias = None
        if ctx.bias_dtype is not None:
            dbias = as_dtype(dy.sum(0).reshape(shape), ctx.bias_dtype)
        return as_dtype(dx.reshape(input.shape), input.dtype), None, dweight, dbias, None


# ---------------------------------------------------------------------------------------------
# Public API: torch.nn.functional's signature
# ---------------------------------------------------------------------------------------------


def layer_norm(
    input: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalization over the last ``len(normalized_shape)`` dimensions.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias``, statistics (biased variance)
    over the last ``len(normalized_shape)`` dimensions of each sample.

    Args:
        input: any shape ``(*, *normalized_shape)``, floating point.
        normalized_shape: the trailing shape to normalise over (a list, tuple or Size).
        weight, bias: optional, of shape ``normalized_shape``.
        eps: added to the variance. Default: 1e-5.

    Shape:
        output has the shape and dtype of ``input``.

    Example:
        >>> y = layer_norm(torch.randn(8, 5, 16), [16])
    """
    if not torch.compiler.is_compiling():  # a compiled graph guards on less without it
        operator = fast.operator_for(input, normalized_shape, weight, bias)
        if operator is not None:  # the common case, checked in one go
            return operator(input, normalized_shape, weight, bias, eps)
    check_floating(input, "layer_norm")
    shape = check_normalized_shape(
        input, normalized_shape, {"weight": weight, "bias": bias}, "layer_norm"
    )
    check_param_dtypes(input, (weight, bias), "layer_norm")
    if torch.compiler.is_compiling() or not _autograd.eager(input):  # compiling: fewer guards
        ops = compiled_ops(input, math.prod(shape), weight, bias)
        if ops is not None:  # torch.compile on the CPU: the operator, one call each way
            return ops.layer_norm(input, shape, weight, bias, eps)
        if input.numel() == 0 or torch._C._are_functorch_transforms_active():
            return forward(input, shape, weight, bias, eps)  # torch.func: the formula
        out: Tensor = _CompiledFormula.apply(input, shape, weight, bias, eps)[0]
        return out  # torch.compile: the formula with its closed-form backward
    return _autograd.run(
        fast.fast_path(input, shape, weight, bias, eps),
        lambda dy, x, w: backward(dy, x, shape, w, eps),
        input,
        weight,
        bias,
    )
