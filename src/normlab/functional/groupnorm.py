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
operations; :func:`group_norm` runs them under ``torch.func`` and ``torch.compile`` (and
differentiates the backward for higher derivatives), except that a compiled graph on the
CPU (float32, float64) calls normlab's operator ``torch.ops.normlab.group_norm`` instead.
Eagerly it runs a fast path through :mod:`normlab.functional._autograd`
(:mod:`normlab.functional._fast.groupnorm`: normlab's kernels, or in-place tensor
arithmetic), the common call recognised by one short check before the full ones. float16 /
bfloat16 inputs: statistics and arithmetic in float32, output in the input's dtype. Errors
are torch's.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.errors import UsageError
from normlab.functional._common import (
    ShapeError,
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
    operator = fast.cpu_operator(input, num_groups, weight, bias)
    if operator is not None:  # the common case, checked in one go
        return operator(input, num_groups, weight, bias, eps)
    check_floating(input, "group_norm")
    _check_group_norm(input, num_groups, weight, bias)
    check_param_dtypes(input, (weight, bias), "group_norm")
    if not _autograd.eager(input):
        ops = compiled_ops(input, weight, bias)
        if ops is not None:  # torch.compile on the CPU: the operator, one call each way
            return ops.group_norm(input, num_groups, weight, bias, eps)
        return forward(input, num_groups, weight, bias, eps)
    return _autograd.run(
        fast.fast_path(input, num_groups, weight, bias, eps),
        lambda dy, x, w: backward(dy, x, num_groups, w, eps),
        input,
        weight,
        bias,
    )
