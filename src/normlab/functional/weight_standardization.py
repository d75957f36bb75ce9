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

The standardized weight is batch norm of ``W`` viewed as ``(1, O, fan_in)`` (one sample,
``O`` channels, ``fan_in`` values each, no affine). Eagerly that is how it is computed:
:func:`normlab.functional.batchnorm.batch_norm_core` in training, with its closed-form
backward and its fused paths (normlab's CPU kernels: one operator call each way, made
directly where they take the weight). Under
``torch.compile`` and ``torch.func`` the formula below runs (:func:`formula`), and
autograd differentiates it: the compiler fuses its few operations on the small weight.
Both take each channel's statistics shifted by a value of its own (the kernels' rounded
first mean, the formula's first weight, ``V = W[o] - W[o, 0]``, then Welford's
``var_mean``): subtracting a rounded ``mean(W[o])`` directly would cost every digit of a
weight far from zero (mean 1e4, std 1e-2 in float32: the mean's rounding is 5e-4, a
twentieth of the spread). A channel of one weight (a ``1x1`` convolution of one input
channel per group) has zero variance: its standardized weight is 0. float16 / bfloat16
weights: arithmetic in float32, result in the weight's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.functional._common import as_dtype, compute_dtype
from normlab.functional._fast import batchnorm as fast_batch_norm
from normlab.functional.batchnorm import batch_norm_core


def formula(weight: Tensor, eps: float) -> Tensor:
    """``(W[o] - mean) * rsqrt(var + eps)`` per output channel, on the weights shifted by
    each channel's first (exact for close values; their mean is small, so exact too)."""
    flat = as_dtype(weight, compute_dtype(weight.dtype)).reshape(weight.shape[0], -1)
    shifted = flat - flat[:, :1]
    var, mean = torch.var_mean(shifted, 1, correction=0, keepdim=True)
    standardized = (shifted - mean) * torch.rsqrt(var + eps)
    return as_dtype(standardized.reshape(weight.shape), weight.dtype)


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
    flat = weight.reshape(1, weight.shape[0], -1)
    # eagerly, where the CPU kernels take the weight: one operator call (None otherwise)
    standardized = fast_batch_norm.train_by_operator(flat, None, None, None, None, 0.0, eps)
    if standardized is None:
        if not _autograd.eager(weight):  # torch.compile, torch.func: the formula
            return formula(weight, eps)
        # batch norm's other paths (half precision, no kernels, a fan-in of one)
        standardized = batch_norm_core(flat, None, None, None, None, True, 0.0, eps)
    return standardized.reshape(weight.shape)
