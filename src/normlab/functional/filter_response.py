"""Filter response normalization with a thresholded linear unit (Singh & Krishnan, 2020).

Each channel of each sample is divided by the root mean square of its own responses over
space (no centring, no batch statistics), then scaled, shifted and thresholded by a
learned ``tau`` (the TLU, which stands in for the ReLU that usually follows)::

    nu2[n, c] = mean over (H, W) of x[n, c]^2
    y         = max(weight_c * x / sqrt(nu2 + eps) + bias_c, tau_c)

``eps`` may be a tensor (a learned one: ``eps + |eps_l|``, the paper's choice for layers
whose spatial extent is 1x1, where ``nu2 = x^2`` and a fixed small ``eps`` turns the layer
into a sign function).

How it is computed: the formula as written, differentiated by autograd (one reduction and
one pointwise expression; ``torch.compile`` fuses them). With ``z = weight * x * r + bias``,
``r = (nu2 + eps)^(-1/2)``, ``m`` the number of spatial positions and ``g = dL/dy`` where
``z > tau`` (else 0), the backward autograd evaluates is::

    dL/dx   = weight * r * (g - x * mean_HW(g * x) * r^2)
    dL/dtau = sum of dL/dy where z <= tau        dL/dweight = sum(g * x * r)

float16 / bfloat16 inputs: arithmetic in float32, output in the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _channel(v: Tensor, ndim: int, dtype: torch.dtype) -> Tensor:
    return v.to(dtype).reshape(-1, *[1] * (ndim - 2))


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
    compute = torch.float32 if input.dtype in _LOW_PRECISION else input.dtype
    ndim, x = input.dim(), input.to(compute)
    nu2 = x.square().mean(tuple(range(2, ndim)), keepdim=True) if ndim > 2 else x.square()
    eps_value = eps.to(compute) if isinstance(eps, Tensor) else eps
    y = x * torch.rsqrt(nu2 + eps_value) * _channel(weight, ndim, compute)
    y = y + _channel(bias, ndim, compute)
    if tau is not None:
        y = torch.maximum(y, _channel(tau, ndim, compute))
    return y.to(input.dtype)
