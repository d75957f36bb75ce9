"""``GhostBatchNorm1d/2d``: ghost batch norm (Hoffer, Hubara & Soudry, 2017) on
:func:`normlab.functional.ghost_batch_norm`.

Batch norm's state and bookkeeping (``normlab.nn.batchnorm._BatchNorm``: the same
parameters, buffers and ``state_dict`` keys as ``torch.nn.BatchNorm2d``) plus
``virtual_batch_size``; the statistics of training come from each consecutive chunk of that
many samples. How the running statistics are updated (once per call, the chunks'
statistics averaged) and what happens to a batch the size does not divide (a smaller last
chunk) is written in :mod:`normlab.functional.ghost`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.functional.ghost import check_virtual_batch_size, ghost_batch_norm
from normlab.nn._arguments import check_num_features
from normlab.nn._base import document
from normlab.nn.batchnorm import _BatchNorm

_GHOST_BODY = r"""
    .. math::
        y_k = \frac{x_k - \mathrm{E}[x_k]}{\sqrt{\mathrm{Var}[x_k] + \epsilon}} \gamma + \beta,
        \qquad x_k = x[kV : (k + 1)V], \quad V = \text{virtual\_batch\_size}

    In training each chunk of :math:`V` consecutive samples is normalised with its own
    statistics per channel over {over} (biased variance); :math:`\gamma` and :math:`\beta`
    are shared. The last chunk holds the remainder when :math:`V` does not divide the batch.
    The running statistics move once per call towards the chunks' size-weighted mean and
    unbiased variance; evaluation is batch norm's with them. A batch of at most :math:`V`
    samples is batch norm exactly.

    Args:
        num_features: :math:`C`, the number of channels.
        virtual_batch_size: :math:`V`, samples per chunk (a positive integer).
        eps: added to the variance. Default: 1e-5.
        momentum: weight of the batch in the running statistics; ``None`` for a cumulative
            average. Default: 0.1.
        affine: learnable per-channel ``weight`` and ``bias``. Default: ``True``.
        track_running_stats: keep running statistics (else chunk statistics in evaluation
            too). Default: ``True``.
        device, dtype: where and in which dtype parameters and buffers are created.
        bias: with ``affine``, whether to learn ``bias`` (keyword only). Default: ``True``.

    Shape:
        - Input: {shape}
        - Output: same shape as the input.

    Example:
        >>> m = {name}(16, virtual_batch_size=4)
        >>> y = m(torch.randn({example}))
        >>> m.running_mean.shape
        torch.Size([16])
"""


class _GhostBatchNorm(_BatchNorm):
    """Batch norm's state with per-chunk statistics in training."""

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        check_num_features(num_features)
        check_virtual_batch_size(virtual_batch_size)
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.virtual_batch_size = virtual_batch_size

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = self._exponential_average_factor()
        running_mean, running_var = self._running_stats()
        return ghost_batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            self._uses_batch_stats(),
            factor,
            self.eps,
            self.virtual_batch_size,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, virtual_batch_size={self.virtual_batch_size}, "
            f"eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )


@document(
    over="the chunk's samples and length",
    shape=":math:`(N, C)` or :math:`(N, C, L)`",
    name="GhostBatchNorm1d",
    example="8, 16, 20",
)
class GhostBatchNorm1d(_GhostBatchNorm):
    __doc__ = "Ghost batch norm over a 2D ``(N, C)`` or 3D ``(N, C, L)`` input.\n"
    __doc__ += _GHOST_BODY
    _input_dims = (2, 3)


@document(
    over="the chunk's samples, height and width",
    shape=":math:`(N, C, H, W)`",
    name="GhostBatchNorm2d",
    example="8, 16, 5, 5",
)
class GhostBatchNorm2d(_GhostBatchNorm):
    __doc__ = "Ghost batch norm over a 4D input ``(N, C, H, W)``.\n"
    __doc__ += _GHOST_BODY
    _input_dims = (4,)
