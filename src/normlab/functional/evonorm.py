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

How they are computed: the formulas as written (``torch.var``, two-pass, stable far from
zero), differentiated by autograd; ``torch.compile`` fuses each into a few reductions and
one pointwise kernel. float16 / bfloat16 inputs: arithmetic in float32, output in the
input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _channel(v: Tensor, ndim: int, dtype: torch.dtype) -> Tensor:
    return v.to(dtype).reshape(-1, *[1] * (ndim - 2))


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
    return input * _channel(weight, ndim, input.dtype) + _channel(bias, ndim, input.dtype)


def check_groups(num_features: int, groups: object) -> None:
    """``groups`` a positive ``int`` dividing ``num_features``, else ``ValueError``."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if num_features % groups:
        raise ValueError(f"num_features ({num_features}) must be divisible by groups ({groups})")


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
    dtype, ndim = _compute_dtype(input), input.dim()
    x = input.to(dtype)
    spatial = tuple(range(2, ndim))
    if training:
        n = x.numel() // x.shape[1]
        if n == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size "
                f"{input.size()}"
            )
        var_batch = x.var((0, *spatial), correction=0, keepdim=True)
        with torch.no_grad():
            unbiased = var_batch.reshape(-1) * (n / (n - 1))
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)
    else:
        var_batch = _channel(running_var, ndim, dtype)
    instance_std = (x.var(spatial, correction=0, keepdim=True) + eps).sqrt()
    denominator = torch.maximum(
        (var_batch + eps).sqrt(), _channel(v, ndim, dtype) * x + instance_std
    )
    y = x / denominator * _channel(weight, ndim, dtype) + _channel(bias, ndim, dtype)
    return y.to(input.dtype)


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
    dtype, ndim = _compute_dtype(input), input.dim()
    x = input.to(dtype)
    grouped = x.reshape(x.shape[0], groups, -1)
    group_std = (grouped.var(-1, correction=0, keepdim=True) + eps).sqrt()
    gate = x * torch.sigmoid(_channel(v, ndim, dtype) * x)
    normalised = (gate.reshape_as(grouped) / group_std).reshape(x.shape)
    y = normalised * _channel(weight, ndim, dtype) + _channel(bias, ndim, dtype)
    return y.to(input.dtype)
