"""Filter response normalization with a thresholded linear unit (Singh & Krishnan, 2020).

Each channel of each sample is divided by the root mean square of its own responses over
space (no centring, no batch statistics), then scaled, shifted and thresholded by a
learned ``tau`` (the TLU, which stands in for the ReLU that usually follows)::

    nu2[n, c] = mean over (H, W) of x[n, c]^2
    y         = max(weight_c * x / sqrt(nu2 + eps) + bias_c, tau_c)

``eps`` may be a tensor (a learned one: ``eps + |eps_l|``, the paper's choice for layers
whose spatial extent is 1x1, where ``nu2 = x^2`` and a fixed small ``eps`` turns the layer
into a sign function).

The backward in closed form, with ``r = (nu2 + eps)^(-1/2)``, ``z = weight * x * r + bias``,
``m`` the number of spatial positions, ``g = dL/dy`` where ``z >= tau`` (else 0; a tie
``z = tau`` passes, as through ``clamp``) and ``S = sum_HW(g * x)`` per sample and
channel::

    dL/dx       = weight * r * (g - x * r^2 * S / m)
    dL/dweight  = sum_N(r * S)          dL/dbias = sum(g)
    dL/dtau     = sum of dL/dy where z < tau
    dL/deps     = -1/2 * sum_{N,C}(weight * r^3 * S)        (a tensor ``eps`` only)

How it is computed: :func:`forward` and :func:`backward` are these formulas as
differentiable tensor operations; :func:`filter_response_norm` runs the forward under
``torch.compile`` and ``torch.func`` (which differentiate it themselves). Eagerly it runs
one ``autograd.Function`` (:mod:`normlab.functional._fast.filter_response`): the forward
in three passes over the input, the closed-form backward in place on tensors, and
:func:`backward` differentiated when a graph of the backward is wanted.

float16 / bfloat16 inputs: arithmetic in float32, output in the input's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.functional._common import as_dtype, as_layout, compute_dtype, per_channel_as
from normlab.functional._fast import filter_response as fast


def _spatial(ndim: int) -> tuple[int, ...]:
    return tuple(range(2, ndim))


# ---------------------------------------------------------------------------------------------
# The formula
# ---------------------------------------------------------------------------------------------


def _rsqrt_mean_square(x: Tensor, eps: float | Tensor) -> Tensor:
    """``r = (mean_HW(x^2) + eps)^(-1/2)``, keepdim; an ``(N, C)`` input is its own mean."""
    ndim = x.dim()
    nu2 = x.square().mean(_spatial(ndim), keepdim=True) if ndim > 2 else x.square()
    return torch.rsqrt(nu2 + (eps.to(x.dtype) if isinstance(eps, Tensor) else eps))


def forward(
    input: Tensor, weight: Tensor, bias: Tensor, tau: Tensor | None, eps: float | Tensor
) -> Tensor:
    """``max(weight * x * r + bias, tau)`` as tensor operations, in the computation dtype,
    output in ``input``'s dtype. The TLU is ``clamp(z, min=tau)``: ``max`` with the
    gradient of a tie given to ``z`` (as the closed form), NaN kept."""
    dtype, ndim = compute_dtype(input.dtype), input.dim()
    x = as_dtype(input, dtype)
    z = x * _rsqrt_mean_square(x, eps) * per_channel_as(weight, ndim, dtype)
    z = z + per_channel_as(bias, ndim, dtype)
    if tau is not None:
        tau_c = per_channel_as(tau, ndim, dtype)
        z = torch.clamp(z, min=tau_c)
    return as_dtype(z, input.dtype)


def backward(
    grad_out: Tensor,
    input: Tensor,
    weight: Tensor,
    bias: Tensor,
    tau: Tensor | None,
    eps: float | Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Closed-form ``(dx, dweight, dbias, dtau, deps)`` in the shapes and dtypes of the
    arguments (``dtau`` ``None`` without ``tau``, ``deps`` ``None`` for a float ``eps``),
    statistics recomputed from ``input``; differentiable, for higher derivatives."""
    dtype, ndim = compute_dtype(input.dtype), input.dim()
    x, dy = as_dtype(input, dtype), as_dtype(grad_out, dtype)
    spatial, reduced = _spatial(ndim), (0, *_spatial(ndim))
    m = math.prod(x.shape[2:])
    r = _rsqrt_mean_square(x, eps)
    w = per_channel_as(weight, ndim, dtype)
    g, dtau = dy, None
    if tau is not None:
        below = w * x * r + per_channel_as(bias, ndim, dtype) < per_channel_as(tau, ndim, dtype)
        g = torch.where(below, 0.0, dy)
        dtau = as_dtype(torch.where(below, dy, 0.0).sum(reduced), tau.dtype)
    row_sums = (g * x).sum(spatial, keepdim=True) if ndim > 2 else g * x
    dx = w * r * (g - x * r.square() * row_sums / m)
    dweight = as_dtype((r * row_sums).sum(reduced), weight.dtype)
    dbias = as_dtype(g.sum(reduced), bias.dtype)
    deps = None
    if isinstance(eps, Tensor):
        deps_all = -0.5 * w * r.pow(3) * row_sums
        deps = as_dtype(deps_all.sum_to_size(eps.shape), eps.dtype)
    return as_dtype(dx, input.dtype), dweight, dbias, dtau, deps


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _records_graph(*tensors: Tensor | float | None) -> bool:
    """Whether autograd records this call: grad mode on and some tensor requires grad."""
    return torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in tensors
    )


def filter_response_norm(
    input: Tensor,
    weight: Tensor,
    bias: Tensor,
    tau: Tensor | None,
    eps: float | Tensor = 1e-6,
) -> Tensor:
    r"""FRN of each channel of ``(N, C, *)`` over its spatial positions, then the TLU.

    .. math::
        y = \max\left(\gamma \frac{x}{\sqrt{\mathrm{mean}_{HW}(x^2) + \epsilon}} + \beta,
        \tau\right)

    Args:
        input: ``(N, C, *)`` floating-point tensor; an ``(N, C)`` input is its own mean square.
        weight, bias: ``(C,)`` tensors :math:`\gamma`, :math:`\beta`.
        tau: ``(C,)`` thresholds, or ``None`` for no TLU.
        eps: a float or a tensor (learned). Default: 1e-6.

    Shape:
        input ``(N, C, *)``, output the same shape and dtype.

    Example:
        >>> x = torch.randn(2, 3, 4, 4)
        >>> y = filter_response_norm(x, torch.ones(3), torch.zeros(3), torch.zeros(3))
        >>> bool((y >= 0).all())  # tau = 0: the TLU is a ReLU
        True
    """
    if input.dim() < 2:
        raise ValueError(
            f"filter_response_norm: expected input of shape (N, C, *) (got {input.dim()}D input)"
        )
    scalar_eps = not isinstance(eps, Tensor) or eps.numel() == 1
    if not (_autograd.eager(input) and scalar_eps):
        return forward(input, weight, bias, tau, eps)
    rows = fast.rows_of(as_dtype(input, compute_dtype(input.dtype)))
    if _records_graph(rows, weight, bias, tau, eps):
        out = fast.FilterResponseFunction.apply(backward, rows, weight, bias, tau, eps)
    else:
        out = fast.forward(rows, weight, bias, tau, eps)[0]
    return as_layout(out, input.shape, input.dtype)
