"""``BatchRenorm1d/2d/3d``: batch renormalization (Ioffe, 2017) on
:func:`normlab.functional.batch_renorm`.

The layers share batch norm's state and bookkeeping (``normlab.nn.batchnorm._BatchNorm``:
``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``; the same
``state_dict`` keys as ``torch.nn.BatchNorm2d``, so a batch norm's ``state_dict`` loads
into a renorm layer and back) and add the clipping limits ``rmax``, ``dmax`` and the
paper's optional warm-up schedule of those limits.

Defaults elsewhere, and where ours differ:

- torchrl's ``BatchRenorm1d(num_features, *, momentum=0.01, eps=1e-5, max_r=3.0,
  max_d=5.0, warmup_steps=10000, smooth=False)``: the same momentum, eps and limits;
  but it trains as plain batch norm for its first 10000 steps (then switches, or with
  ``smooth`` ramps, to renorm), has no ``affine`` option, and its running variance's
  unbiased correction counts samples only (``N / (N - 1)``, not the ``N * L / (N * L - 1)``
  of the values per channel). Ours renormalises from the first step unless ``warmup``
  is given, and corrects as ``torch.nn`` does.
- Keras' ``BatchNormalization(renorm=True, renorm_clipping=None, renorm_momentum=0.99)``:
  ``renorm_clipping`` maps ``rmax``, ``rmin``, ``dmax`` to limits, a missing key meaning
  no limit (``inf``, ``0``, ``inf``), so the default clips nothing; the renorm statistics
  are separate moving averages with their own momentum (0.99 there is a 0.01 weight of
  the batch), and ``epsilon`` is 1e-3. Ours clips to ``[1/rmax, rmax]`` (``rmin`` is
  ``1/rmax``, as in the paper) and ``[-dmax, dmax]`` by default with the paper's limits
  3 and 5, and uses the running statistics of evaluation for ``r`` and ``d``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.functional.renorm import RenormWarmup, batch_renorm, check_limits
from normlab.nn._arguments import check_num_features
from normlab.nn._base import document
from normlab.nn.batchnorm import _BatchNorm

_RENORM_BODY = r"""
    .. math::
        y = \left(\frac{x - \mu_B}{\sigma_B} r + d\right) \gamma + \beta, \qquad
        r = \mathrm{clip}_{[1/r_{max},\, r_{max}]}\frac{\sigma_B}{\sigma}, \qquad
        d = \mathrm{clip}_{[-d_{max},\, d_{max}]}\frac{\mu_B - \mu}{\sigma}

    :math:`\mu_B`, :math:`\sigma_B = \sqrt{\mathrm{Var}_B[x] + \epsilon}` are the batch's
    statistics per channel over {over} (biased variance), :math:`\mu` and
    :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}` the running ones; :math:`r` and
    :math:`d` carry no gradient. In evaluation the output is batch norm's with the running
    statistics, which training moves as ``torch.nn``'s batch norm does (unbiased variance).
    ``rmax=1, dmax=0`` is batch norm exactly.

    Args:
        num_features: :math:`C`, the number of channels.
        eps: added to both variances. Default: 1e-5.
        momentum: weight of the batch in the running statistics; ``None`` for a cumulative
            average. Default: 0.01 (the paper's and torchrl's; slower than batch norm's 0.1,
            since the running statistics now shape the training output too).
        affine: learnable per-channel ``weight`` and ``bias``. Default: ``True``.
        rmax: ``r`` is clipped to ``[1/rmax, rmax]``, ``rmax >= 1``. Default: 3.
        dmax: ``d`` is clipped to ``[-dmax, dmax]``, ``dmax >= 0``. Default: 5.
        device, dtype: where and in which dtype parameters and buffers are created.
        bias: with ``affine``, whether to learn ``bias`` (keyword only). Default: ``True``.
        warmup: a :class:`~normlab.functional.renorm.RenormWarmup` schedule of the limits
            over ``num_batches_tracked`` (keyword only); ``None`` (default) for the fixed
            ``rmax``, ``dmax`` from the first step.

    Shape:
        - Input: {shape}
        - Output: same shape as the input.

    Example:
        >>> m = {name}(16)
        >>> y = m(torch.randn({example}))
        >>> m.running_mean.shape
        torch.Size([16])
"""


class _BatchRenorm(_BatchNorm):
    """Batch renorm over ``(N, C, *)``: batch norm's state, plus the clipping limits."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.01,
        affine: bool = True,
        rmax: float = 3.0,
        dmax: float = 5.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        warmup: RenormWarmup | None = None,
    ) -> None:
        check_num_features(num_features)
        check_limits(rmax, dmax)
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, bias=bias)
        self.rmax = rmax
        self.dmax = dmax
        self.warmup = warmup

    def limits(self) -> tuple[float | Tensor, float | Tensor]:
        """``(rmax, dmax)`` for the batch being trained on (``num_batches_tracked`` counts
        it already), from the warm-up schedule if there is one (then 0-dimensional tensors)."""
        if self.warmup is None or self.num_batches_tracked is None:
            return self.rmax, self.dmax
        return self.warmup.limits(self.num_batches_tracked - 1, self.rmax, self.dmax)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = self._exponential_average_factor()
        assert self.running_mean is not None and self.running_var is not None
        rmax, dmax = self.limits()
        return batch_renorm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            factor,
            self.eps,
            rmax,
            dmax,
        )

    def extra_repr(self) -> str:
        warmup = "" if self.warmup is None else f", warmup={self.warmup}"
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, rmax={self.rmax}, "
            f"dmax={self.dmax}{warmup}"
        )


@document(
    over="the batch and the length",
    shape=":math:`(N, C)` or :math:`(N, C, L)`",
    name="BatchRenorm1d",
    example="8, 16, 20",
)
class BatchRenorm1d(_BatchRenorm):
    __doc__ = "Batch renormalization over a 2D ``(N, C)`` or 3D ``(N, C, L)`` input.\n"
    __doc__ += _RENORM_BODY
    _input_dims = (2, 3)


@document(
    over="the batch, height and width",
    shape=":math:`(N, C, H, W)`",
    name="BatchRenorm2d",
    example="8, 16, 5, 5",
)
class BatchRenorm2d(_BatchRenorm):
    __doc__ = "Batch renormalization over a 4D input ``(N, C, H, W)``.\n"
    __doc__ += _RENORM_BODY
    _input_dims = (4,)


@document(
    over="the batch, depth, height and width",
    shape=":math:`(N, C, D, H, W)`",
    name="BatchRenorm3d",
    example="8, 16, 3, 5, 5",
)
class BatchRenorm3d(_BatchRenorm):
    __doc__ = "Batch renormalization over a 5D input ``(N, C, D, H, W)``.\n"
    __doc__ += _RENORM_BODY
    _input_dims = (5,)
