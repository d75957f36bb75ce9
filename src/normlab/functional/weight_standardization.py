"""Weight standardization (Qiao, Wang, Liu, Shen & Yuille, 2019): each output channel's
convolution weight with zero mean and unit variance over its fan-in.

For a weight ``W`` of shape ``(O, C / groups, kh, kw)`` and each output channel ``o``, over
its ``fan_in = C / groups * kh * kw`` values (biased variance, ``eps`` inside the root, as
timm's ``StdConv2d`` writes it)::

    mean_o = sum(W[o]) / fan_in          var_o = sum((W[o] - mean_o)^2) / fan_in
    What[o] = (W[o] - mean_o) / sqrt(var_o + eps)

and the layer convolves with ``What``. Paired with group norm it lets small batches train
as well as batch norm does with large ones (the paper's headline), because the loss
landscape is smoothed in the weights themselves rather than through batch statistics.

The standardized weight is batch norm of ``W`` viewed as ``(1, O, fan_in)``; here it is
written as the formula and differentiated by autograd. Each channel is first shifted by its
first weight, ``V = W[o] - W[o, 0]``, then centred on ``mean(V)`` (Welford's ``var_mean``
gives both moments): subtracting a rounded ``mean(W[o])`` directly would cost every digit
of a weight far from zero (mean 1e4, std 1e-2 in float32: the mean's rounding is 5e-4, a
twentieth of the spread), while ``V`` is exact and its mean small. Autograd suffices for
the backward: the weight is small next to the activations, and a closed form would save
nothing that matters. float16 / bfloat16 weights: arithmetic in float32, result in the
weight's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def standardize_weight(weight: Tensor, eps: float = 1e-6) -> Tensor:
    r"""Each output channel of ``weight`` standardized over its fan-in.

    .. math::
        \hat{W}_o = \frac{W_o - \mathrm{E}[W_o]}{\sqrt{\mathrm{Var}[W_o] + \epsilon}}

    Args:
        weight: ``(O, *)`` floating-point tensor, ``O`` output channels (any fan-in shape).
        eps: added to the variance. Default: 1e-6.

    Shape:
        input ``(O, *)``, output the same shape and dtype.

    Example:
        >>> w = standardize_weight(torch.randn(8, 3, 3, 3))
        >>> bool(w.flatten(1).mean(1).abs().max() < 1e-6)
        True
    """
    if weight.dim() < 2:
        raise ValueError(
            f"standardize_weight: expected a weight of shape (O, *) (got {weight.dim()}D)"
        )
    compute = torch.float32 if weight.dtype in _LOW_PRECISION else weight.dtype
    flat = weight.to(compute).reshape(weight.shape[0], -1)
    shifted = flat - flat[:, :1]  # exact for close values; its mean is small, so exact too
    var, mean = torch.var_mean(shifted, 1, correction=0, keepdim=True)
    return ((shifted - mean) * torch.rsqrt(var + eps)).reshape(weight.shape).to(weight.dtype)
