"""RMS normalization (Zhang & Sennrich, 2019): the formula, its backward, ``rms_norm``.

Layer norm without the centring: each row ``x`` of ``D = prod(normalized_shape)`` values
is divided by its root mean square::

    rstd = rsqrt(sum(x^2) / D + eps)      xhat = x * rstd      y = xhat * weight

``eps=None`` means ``torch.finfo`` eps of the computation dtype (float32 for
float16/bfloat16/float32 inputs, float64 for float64), as torch does. The backward in
closed form, with ``g = dy * weight`` and means over the row::

    dx      = rstd * (g - xhat * mean(g * xhat))
    dweight = sum over rows of dy * xhat

:func:`forward` and :func:`backward` are these formulas as differentiable tensor
operations; :func:`rms_norm` runs them under ``torch.func`` and ``torch.compile`` (and
differentiates the backward for higher derivatives), except that a compiled graph on the
CPU (float32, float64) calls normlab's operator ``torch.ops.normlab.rms_norm`` instead.
Eagerly it runs a fast path through :mod:`normlab.functional._autograd`
(:mod:`normlab.functional._fast.rmsnorm`: normlab's CPU operator
``torch.ops.normlab.rms_norm``, or the formulas in place on tensors).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.functional._common import (
    check_floating,
    check_normalized_shape,
    compute_dtype,
)
from normlab.functional._fast import rmsnorm as fast
from normlab.functional._fast.layernorm import compiled_ops

# ---------------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------------


def forward(input: Tensor, shape: tuple[int, ...], weight: Tensor | None, eps: float) -> Tensor:
    """``y = x * rsqrt(mean(x^2) + eps) * weight`` over the trailing ``shape``."""
    dims = tuple(range(-len(shape), 0))
    x = input.to(compute_dtype(input.dtype))
    out = x * torch.rsqrt(x.square().mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out.to(input.dtype)


def backward(
    grad_out: Tensor, input: Tensor, shape: tuple[int, ...], weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, None]:
    """Closed-form ``(dx, dweight, None)`` (``dweight`` a ``(D,)`` vector), statistics
    recomputed from ``input``; differentiable, for higher derivatives."""
    width = math.prod(shape)
    dtype = compute_dtype(input.dtype)
    x = input.to(dtype).reshape(-1, width)
    rstd = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    xhat = x * rstd
    dy = grad_out.to(dtype).reshape(-1, width)
    g = dy if weight is None else dy * weight.to(dtype).reshape(width)
    dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    return dx.reshape(input.shape).to(input.dtype), (dy * xhat).sum(0), None


# ---------------------------------------------------------------------------------------------
# Public API: torch.nn.functional's signature
# ---------------------------------------------------------------------------------------------


def _rms_eps(eps: float | None, dtype: torch.dtype) -> float:
    """torch's default: the machine epsilon of the computation dtype."""
    return eps if eps is not None else torch.finfo(compute_dtype(dtype)).eps


def rms_norm(
    input: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """Root-mean-square normalization over the last ``len(normalized_shape)`` dimensions.

    ``y = x / sqrt(mean(x^2) + eps) * weight``, no centring and no bias.

    Args:
        input: any shape ``(*, *normalized_shape)``, floating point.
        normalized_shape: the trailing shape to normalise over (a list, tuple or Size).
        weight: optional, of shape ``normalized_shape``.
        eps: added to the mean square; ``None`` means ``torch.finfo(t).eps`` for the
            computation dtype ``t`` (float32 for half-precision inputs). Default: None.

    Shape:
        output has the shape and dtype of ``input``.

    Example:
        >>> y = rms_norm(torch.randn(8, 5, 16), [16])
    """
    operator = fast.cpu_operator(input, normalized_shape, weight)
    if operator is not None:  # the common case, checked in one go
        return operator(input, normalized_shape, weight, _rms_eps(eps, input.dtype))
    check_floating(input, "rms_norm")
    shape = check_normalized_shape(input, normalized_shape, {"weight": weight}, "rms_norm")
    eps_value = _rms_eps(eps, input.dtype)
    if not _autograd.eager(input):
        ops = compiled_ops(input, math.prod(shape), weight)
        if ops is not None:  # torch.compile on the CPU: the operator, one call each way
            return ops.rms_norm(input, shape, weight, eps_value)
        return forward(input, shape, weight, eps_value)
    return _autograd.run(
        fast.fast_path(input, shape, weight, eps_value),
        lambda dy, x, w: backward(dy, x, shape, w, eps_value),
        input,
        weight,
        None,
    )
