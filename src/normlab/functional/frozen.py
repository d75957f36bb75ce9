"""Frozen batch norm: evaluation-mode batch norm with fixed statistics, whatever the mode.

Detection and segmentation backbones (torchvision's and detectron2's ``FrozenBatchNorm2d``)
fine-tune with batches of one or two images per device, too few for batch statistics; they
keep the pretrained per-channel statistics and affine, all four fixed::

    y = (x - running_mean_c) * scale_c + bias_c,    scale_c = weight_c / sqrt(running_var_c + eps)

This is ``torch.nn.BatchNorm2d`` in evaluation mode. The input is centred before it is
scaled: ``x * scale + (bias - running_mean * scale)`` (torchvision's form, one fewer pass)
loses every digit of the output when ``x`` and ``running_mean`` are large and close
(mean 1e4, std 1e-2 in float32: ``x * scale`` is about 1e6, its rounding error 0.06, of an
output of order one). The centred input is the output's buffer, scaled and shifted in place:
one activation-sized allocation (torchvision's form makes two). The gradient is
``dL/dx = dL/dy * scale`` (and, where the per-channel tensors want gradients, autograd's
of the formula).

Eagerly on the CPU, with buffers that want no gradient (the module's case), the formula
runs as one C++ operator, one pass each way (:mod:`normlab.functional._fast.frozen`);
under ``torch.compile`` and ``torch.func``, and elsewhere, as the tensor operations below.

float16 / bfloat16 inputs: arithmetic in float32, output in the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.functional._common import as_dtype, compute_dtype, per_channel
from normlab.functional._fast import frozen as fast


def frozen_batch_norm(
    input: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    r"""Batch norm with fixed statistics and affine, the same in training and evaluation.

    .. math::
        y = \frac{x - \mu_c}{\sqrt{\sigma^2_c + \epsilon}} \gamma_c + \beta_c

    with :math:`\mu` = ``running_mean``, :math:`\sigma^2` = ``running_var``,
    :math:`\gamma` = ``weight`` and :math:`\beta` = ``bias``.

    Args:
        input: ``(N, C, *)`` floating-point tensor.
        weight, bias, running_mean, running_var: ``(C,)`` tensors.
        eps: added to the variance. Default: 1e-5.

    Shape:
        input ``(N, C, *)``, output the same shape and dtype.

    Example:
        >>> x = torch.randn(2, 3, 4, 4)
        >>> ones, zeros = torch.ones(3), torch.zeros(3)
        >>> torch.allclose(frozen_batch_norm(x, ones, zeros, zeros, ones, eps=0.0), x)
        True
    """
    if input.dim() < 2:
        raise ValueError(
            f"frozen_batch_norm: expected input of shape (N, C, *) (got {input.dim()}D input)"
        )
    if _autograd.eager(input):
        ops = fast.cpu_operator(input, (weight, bias, running_mean, running_var))
        if ops is not None:
            return ops.frozen_batch_norm(input, weight, bias, running_mean, running_var, eps)
    dtype, ndim = compute_dtype(input.dtype), input.dim()
    scale = torch.rsqrt(as_dtype(running_var, dtype) + eps) * as_dtype(weight, dtype)
    out = as_dtype(input, dtype) - per_channel(as_dtype(running_mean, dtype), ndim)
    out.mul_(per_channel(scale, ndim)).add_(per_channel(as_dtype(bias, dtype), ndim))
    return as_dtype(out, input.dtype)  # out: the one activation-sized allocation
