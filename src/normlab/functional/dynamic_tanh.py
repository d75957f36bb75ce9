"""Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, 2025, "Transformers without Normalization"):
an element-wise stand-in for layer norm.

Layer norm in trained Transformers maps its inputs along S-shaped, tanh-like curves; DyT
keeps that shape and drops the statistics::

    y = weight * tanh(alpha * x) + bias

``alpha`` is one learned scalar, ``weight`` and ``bias`` are per element of the normalized
(trailing) shape, as layer norm's affine. No reduction: each output depends on its input
alone, so the layer has no batch or feature statistics to compute or synchronise.

How it is computed: the formula as written, differentiated by autograd
(``dL/dx = dL/dy * weight * alpha * (1 - tanh^2)``). float16 / bfloat16 inputs: arithmetic
in float32, output in the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def dynamic_tanh(
    input: Tensor, alpha: Tensor, weight: Tensor | None, bias: Tensor | None
) -> Tensor:
    r"""``weight * tanh(alpha * x) + bias`` over the trailing dimensions of ``weight``'s shape.

    .. math::
        y = \gamma \tanh(\alpha x) + \beta

    Args:
        input: ``(*, normalized_shape)`` floating-point tensor.
        alpha: a one-element tensor, :math:`\alpha`.
        weight, bias: ``normalized_shape`` tensors, or ``None``.

    Shape:
        input ``(*, normalized_shape)``, output the same shape and dtype.

    Example:
        >>> y = dynamic_tanh(torch.randn(2, 5), torch.tensor([0.5]), None, None)
        >>> bool(y.abs().max() < 1)
        True
    """
    if input.dtype in _LOW_PRECISION:
        return _dynamic_tanh(input.float(), alpha, weight, bias).to(input.dtype)
    return _dynamic_tanh(input, alpha, weight, bias)


def _dynamic_tanh(
    input: Tensor, alpha: Tensor, weight: Tensor | None, bias: Tensor | None
) -> Tensor:
    """The formula in ``input``'s dtype: three operations (``addcmul`` fuses the affine)."""
    dtype = input.dtype
    y = torch.tanh(_as(alpha, dtype) * input)
    if weight is not None and bias is not None:
        return torch.addcmul(_as(bias, dtype), y, _as(weight, dtype))
    if weight is not None:
        y = y * _as(weight, dtype)
    if bias is not None:
        y = y + _as(bias, dtype)
    return y


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)
