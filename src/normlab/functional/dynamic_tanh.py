"""Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, 2025, "Transformers without Normalization"):
an element-wise stand-in for layer norm.

Layer norm in trained Transformers maps its inputs along S-shaped, tanh-like curves; DyT
keeps that shape and drops the statistics::

    y = weight * tanh(alpha * x) + bias

``alpha`` is one learned scalar, ``weight`` and ``bias`` are per element of the normalized
(trailing) shape, as layer norm's affine. No reduction: each output depends on its input
alone, so the layer has no batch or feature statistics to compute or synchronise.

The backward in closed form, with ``t = tanh(alpha * x)`` and sums over the leading
(batch) dimensions for the affine::

    g       = dy * weight * (1 - t^2)
    dx      = alpha * g                   dalpha = sum over all elements of g * x
    dweight = sum of dy * t               dbias  = sum of dy

How it is computed: :func:`forward` and :func:`backward` are these formulas as
differentiable tensor operations; :func:`dynamic_tanh` runs the forward under
``torch.compile`` and ``torch.func`` (which differentiate it themselves), and eagerly on
inputs of fewer than :data:`FUNCTION_MIN_ELEMENTS` elements (there autograd's three C++
nodes cost less than a Python ``autograd.Function``). Eagerly on larger inputs it runs one
``autograd.Function`` (:mod:`normlab.functional._fast.dynamic_tanh`) whose backward is
the closed form in place on tensors, and which differentiates :func:`backward` when a graph
of the backward is wanted. float16 / bfloat16 inputs: arithmetic in float32, output in the
input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.functional._common import as_dtype, as_layout, compute_dtype
from normlab.functional._fast import dynamic_tanh as fast

# ---------------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------------


def forward(input: Tensor, alpha: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``weight * tanh(alpha * x) + bias`` as tensor operations (``addcmul`` fuses the
    affine), in the computation dtype, output in ``input``'s dtype."""
    dtype = compute_dtype(input.dtype)
    x = as_dtype(input, dtype)
    y = torch.tanh(as_dtype(alpha, dtype) * x)
    if weight is not None and bias is not None and y.is_contiguous():
        y = torch.addcmul(as_dtype(bias, dtype), y, as_dtype(weight, dtype))
    elif weight is not None and bias is not None:  # a channels-last view: addcmul is slower
        y = y * as_dtype(weight, dtype) + as_dtype(bias, dtype)
    elif weight is not None:
        y = y * as_dtype(weight, dtype)
    elif bias is not None:
        y = y + as_dtype(bias, dtype)
    return as_dtype(y, input.dtype)


def backward(
    grad_out: Tensor,
    input: Tensor,
    alpha: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Closed-form ``(dx, dalpha, dweight, dbias)`` in the shapes and dtypes of the
    arguments (``None`` for an absent ``weight`` / ``bias``), ``t`` recomputed from
    ``input``; differentiable, for higher derivatives."""
    dtype = compute_dtype(input.dtype)
    x, dy = as_dtype(input, dtype), as_dtype(grad_out, dtype)
    t = torch.tanh(as_dtype(alpha, dtype) * x)
    affine = weight if weight is not None else bias
    lead = tuple(range(x.dim() - (0 if affine is None else affine.dim())))
    g = dy * (1 - t * t)
    if weight is not None:
        g = g * as_dtype(weight, dtype)
    dx = as_dtype(g * as_dtype(alpha, dtype), input.dtype)
    dalpha = as_layout((g * x).sum(), alpha.shape, alpha.dtype)
    dweight = None if weight is None else as_dtype((dy * t).sum(lead), weight.dtype)
    dbias = None if bias is None else as_dtype(dy.sum(lead), bias.dtype)
    return dx, dalpha, dweight, dbias


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

#: Below this many elements the plain formula runs eagerly too: its three autograd nodes
#: (C++) cost less than one Python ``autograd.Function``, and the closed form's savings (two
#: passes fewer, no temporaries) are smaller than that difference.
FUNCTION_MIN_ELEMENTS = 1 << 17


def _records_graph(*tensors: Tensor | None) -> bool:
    """Whether autograd records this call: grad mode on and some tensor requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
    if input.numel() < FUNCTION_MIN_ELEMENTS or not _autograd.eager(input):
        return forward(input, alpha, weight, bias)
    x = as_dtype(input, compute_dtype(input.dtype))
    if _records_graph(x, alpha, weight, bias):
        out = fast.DynamicTanhFunction.apply(backward, x, alpha, weight, bias)
    else:
        out = fast.forward(x, alpha, weight, bias)[0]
    return as_dtype(out, input.dtype)
