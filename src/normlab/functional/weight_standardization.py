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
``O`` channels, ``fan_in`` values each, no affine), and that is how it is computed:
:func:`normlab.functional.batchnorm.batch_norm_core` in training, with its closed-form
backward, its fused paths (normlab's CPU kernels: one operator each way) and its plain
formula under ``torch.compile`` and ``torch.func``. Its statistics are those of each channel
shifted by a value of its own (the kernels' rounded first mean, the formula's first value)
before the moments are taken: subtracting a rounded ``mean(W[o])`` directly would cost
every digit of a weight far from zero (mean 1e4, std 1e-2 in float32: the mean's rounding
is 5e-4, a twentieth of the spread). A channel of one weight (a ``1x1`` convolution of one
input channel per group) has zero variance: its standardized weight is 0. float16 /
bfloat16 weights: arithmetic in float32, result in the weight's dtype.
"""

from __future__ import annotations

from torch import Tensor

from normlab.functional.batchnorm import batch_norm_core


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
    standardized = batch_norm_core(flat, None, None, None, None, True, 0.0, eps)
    return standardized.reshape(weight.shape)
