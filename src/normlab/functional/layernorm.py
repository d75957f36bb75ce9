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
operations; :func:`layer_norm` runs them under ``torch.func`` and ``torch.compile`` (and
differentiates the backward for higher derivatives), except that a compiled graph on the
CPU (float32, float64) calls normlab's operator ``torch.ops.normlab.layer_norm`` instead.
Eagerly it runs a fast path through :mod:`normlab.functional._autograd`
(:mod:`normlab.functional._fast.layernorm`: normlab's kernels, or in-place tensor
arithmetic); the common call, the CPU operator with valid arguments, is recognised by one
short check before the full ones (:func:`normlab.functional._fast.layernorm.cpu_operator`).
The statistics are per row, so training and evaluation compute the same thing and there are
no running buffers. float16 / bfloat16 inputs: statistics and arithmetic in float32, output
in the input's dtype. Errors are torch's (:class:`~normlab.functional.ShapeError` where
torch raises ``RuntimeError``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.functional._common import (
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
    operator = fast.cpu_operator(input, normalized_shape, weight, bias)
    if operator is not None:  # the common case, checked in one go
        return operator(input, normalized_shape, weight, bias, eps)
    check_floating(input, "layer_norm")
    shape = check_normalized_shape(
        input, normalized_shape, {"weight": weight, "bias": bias}, "layer_norm"
    )
    check_param_dtypes(input, (weight, bias), "layer_norm")
    if not _autograd.eager(input):
        ops = compiled_ops(input, weight, bias)
        if ops is not None:  # torch.compile on the CPU: the operator, one call each way
            return ops.layer_norm(input, shape, weight, bias, eps)
        return forward(input, shape, weight, bias, eps)
    return _autograd.run(
        fast.fast_path(input, shape, weight, bias, eps),
        lambda dy, x, w: backward(dy, x, shape, w, eps),
        input,
        weight,
        bias,
    )
