"""Local response normalization (Krizhevsky et al., 2012): ``local_response_norm``.

Each channel is divided by a power of the mean square over a window of ``size``
neighbouring channels (zero padding at the edges)::

    y_c = x_c / (k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x_c'^2) ^ beta

The window mean is an average pool over the channel dimension of the padded squares. The
formula is plain differentiable tensor operations, which autograd, ``torch.compile`` and
``torch.func`` differentiate themselves: there is no fast path. float16 / bfloat16
inputs: arithmetic in float32, output in the input's dtype.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from normlab.errors import UsageError
from normlab.functional._common import LOW_PRECISION, ShapeError


def local_response_norm(
    input: Tensor,
    size: int,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
) -> Tensor:
    """Local response normalization across channels.

    ``y_c = x_c / (k + alpha / size * sum of x_c'^2 over a window of size channels)^beta``,
    the window ``c - size//2 .. c + (size-1)//2`` clipped at the edges (zero padding).

    Args:
        input: ``(N, C, *)`` with at least one spatial dimension.
        size: number of neighbouring channels in the window (>= 1).
        alpha: multiplicative factor. Default: 1e-4.
        beta: exponent. Default: 0.75.
        k: additive factor. Default: 1.

    Shape:
        output has the shape of ``input`` (and its dtype for floating inputs).

    Example:
        >>> y = local_response_norm(torch.randn(8, 6, 10, 10), 3)
    """
    if not isinstance(input, Tensor):
        raise TypeError(
            f"local_response_norm(): input must be a torch.Tensor, got {type(input).__name__}"
        )
    if input.dim() < 3:
        raise UsageError(
            f"Expected 3D or higher dimensionality input (got {input.dim()} dimensions)"
        )
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"local_response_norm(): size must be an int, not {type(size).__name__}")
    if size < 1:
        raise ShapeError(
            f"local_response_norm: size must be at least 1 (the channels in the window), got {size}"
        )
    if input.numel() == 0:
        return input
    low_precision = input.dtype in LOW_PRECISION
    x = input.float() if low_precision else input
    n, c = input.shape[:2]
    # mean of squares over the channel window: (N, 1, C + size - 1, positions) pooled on C
    squares = (x * x).reshape(n, 1, c, -1)
    squares = F.pad(squares, (0, 0, size // 2, (size - 1) // 2))
    window_mean = F.avg_pool2d(squares, (size, 1), stride=1).view(input.shape)
    out = x / (window_mean * alpha + k).pow(beta)
    return out.to(input.dtype) if low_precision else out
