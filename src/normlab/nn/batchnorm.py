"""``BatchNorm1d/2d/3d``: drop-ins for ``torch.nn``'s, on :func:`normlab.functional.batch_norm`.

``_BatchNorm`` holds the bookkeeping of one training step, split into small methods so that
other batch norms (a synchronised one, in its own module) can reuse it:

- :meth:`_BatchNorm._exponential_average_factor` counts the batch and returns the momentum
  of this step (``1 / num_batches_tracked`` for ``momentum=None``, a cumulative average);
- :meth:`_BatchNorm._uses_batch_stats`: batch statistics in training, and in evaluation when
  there are no running statistics; decided by ``self.training`` only, never by grad mode;
- :meth:`_BatchNorm._running_stats`: the buffers to read or update for this call;
- :meth:`_BatchNorm._check_input`: torch's errors for a bad input (a rank not in the
  subclass's ``_input_dims``, wrong channel count, integer input, mixed dtypes), with a
  fast path for the common, valid call.

``_BatchNorm`` is also a ``torch.nn.modules.batchnorm._BatchNorm`` (see
:mod:`normlab.nn._base`), so that tools such as ``torch.optim.swa_utils.update_bn`` find it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules import batchnorm as torch_batchnorm

from normlab.functional import batch_norm
from normlab.functional.batchnorm import batch_norm_step, count_batch
from normlab.nn._base import (
    _NormBase,
    check_floating,
    check_mixed_dtype,
    check_num_elements,
    document,
)

_BATCH_NORM_BODY = r"""
    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} * \gamma + \beta

    Mean and variance are computed per channel over the batch and {over}
    (``{stats}`` values per channel); :math:`\gamma` (``weight``) and :math:`\beta` (``bias``) are
    learnable vectors of size :math:`C`, initialised to 1 and 0. In training the variance
    is the biased one (``correction=0``) and the running variance stores the unbiased one
    (``correction=1``), as ``torch.nn`` does. In evaluation (``model.eval()``) the running
    statistics are used if tracked; grad mode (``torch.no_grad()``) does not change the mode.

    {momentum_note}

    Args:
        {args}

    Shape:
        - Input: {shape}
        - Output: same shape as the input.

    Example:
        >>> m = {name}(16)
        >>> y = m(torch.randn({example}))
        >>> m.running_mean.shape
        torch.Size([16])
"""


class _BatchNorm(_NormBase, torch_batchnorm._BatchNorm):
    """Batch norm over ``(N, C, *)``: statistics over N and the spatial dimensions."""

    _input_dims: tuple[int, ...]  # the input ranks a subclass takes, as torch.nn's: (4,) for 2d

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            bias=bias,
        )

    def _exponential_average_factor(self) -> float:
        """This step's momentum; in training with tracking, counts the batch first."""
        counted = self.training and self.track_running_stats
        return count_batch(self.momentum, self.num_batches_tracked if counted else None)

    def _uses_batch_stats(self) -> bool:
        """Batch statistics in training, and in evaluation without running statistics."""
        return self.training or (self.running_mean is None and self.running_var is None)

    def _running_stats(self) -> tuple[Tensor | None, Tensor | None]:
        """The buffers for this call: none in training unless they are tracked."""
        if self.training and not self.track_running_stats:
            return None, None
        return self.running_mean, self.running_var

    def _tensors(self) -> tuple[Tensor | None, ...]:
        """``(weight, bias, running_mean, running_var, num_batches_tracked)``, read from the
        module's parameter and buffer dicts: ``nn.Module.__getattr__`` costs about half a
        microsecond a name, a tenth of a small layer's forward. Where one was moved out of
        them (a parametrized ``weight`` is a property), all are read as attributes."""
        params, buffers = self._parameters, self._buffers
        try:
            return (
                params["weight"],
                params["bias"],
                buffers["running_mean"],
                buffers["running_var"],
                buffers["num_batches_tracked"],
            )
        except KeyError:
            return (
                self.weight,
                self.bias,
                self.running_mean,
                self.running_var,
                self.num_batches_tracked,
            )

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self._input_dims:
            _check_dim(input, self._input_dims)

    def _check_input(self, input: Tensor, first: Tensor | None = None) -> None:
        """torch.nn's checks of the input (:meth:`_check_input_thoroughly`), with a fast path:
        the rank, then for the module's channel count in the dtype of its first parameter
        or buffer (``weight``, else ``running_mean``: torch's order) nothing more. A caller
        that holds that tensor already passes it (module attribute lookups less)."""
        self._check_input_dim(input)
        first = first if first is not None else self._first_tensor()
        if first is not None and input.shape[1] == self.num_features and input.dtype == first.dtype:
            return
        self._check_input_thoroughly(input)

    def _first_tensor(self) -> Tensor | None:
        """torch's first parameter for the dtype rule: ``weight`` with ``affine``, else
        ``running_mean`` (``None`` without either)."""
        return self.weight if self.affine else self.running_mean

    def _check_input_thoroughly(self, input: Tensor) -> None:
        """torch.nn's checks in its order after the rank: one value per channel when batch
        statistics are used (``ValueError``), one element per channel in each buffer and
        parameter (``RuntimeError``), a floating-point input and the CPU's dtype rule
        (``NotImplementedError``/``RuntimeError``). An empty input passes, as in torch."""
        if input.numel() == 0:
            return
        if self._uses_batch_stats() and input.numel() == input.shape[1]:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {input.size()}"
            )
        buffers = (("running_mean", self.running_mean), ("running_var", self.running_var))
        check_num_elements((*buffers, ("weight", self.weight), ("bias", self.bias)), input.shape[1])
        check_floating(input, "batch_norm")
        check_mixed_dtype(input, (self.weight, self.bias, self.running_mean, self.running_var))

    def forward(self, input: Tensor) -> Tensor:
        """The steps of :meth:`_check_input`, :meth:`_exponential_average_factor`,
        :meth:`_running_stats` and :meth:`_uses_batch_stats`, on the tensors read once."""
        weight, bias, running_mean, running_var, tracked = self._tensors()
        self._check_input(input, weight if self.affine else running_mean)
        training, tracking = self.training, self.track_running_stats
        if training and tracking:
            return batch_norm_step(
                input, running_mean, running_var, weight, bias, self.momentum, self.eps, tracked
            )
        factor = count_batch(self.momentum, None)
        if training:  # not tracking
            running_mean = running_var = None
        batch_stats = training or (running_mean is None and running_var is None)
        return batch_norm(
            input, running_mean, running_var, weight, bias, batch_stats, factor, self.eps
        )


def _check_dim(input: Tensor, valid: tuple[int, ...]) -> None:
    """torch.nn's rank check and message (a ``ValueError``)."""
    if input.dim() not in valid:
        expected = " or ".join(f"{d}D" for d in valid)
        raise ValueError(f"expected {expected} input (got {input.dim()}D input)")


_DEFAULTS = {"affine": "``True``", "track": "``True``"}


@document(
    name="BatchNorm1d",
    over="the length",
    stats="N * L",
    shape=":math:`(N, C)` or :math:`(N, C, L)`",
    example="8, 16, 20",
    **_DEFAULTS,
)
class BatchNorm1d(_BatchNorm):
    __doc__ = "Batch normalization over a 2D ``(N, C)`` or 3D ``(N, C, L)`` input.\n"
    __doc__ += _BATCH_NORM_BODY
    _input_dims = (2, 3)


@document(
    name="BatchNorm2d",
    over="the height and width",
    stats="N * H * W",
    shape=":math:`(N, C, H, W)`",
    example="8, 16, 5, 5",
    **_DEFAULTS,
)
class BatchNorm2d(_BatchNorm):
    __doc__ = "Batch normalization over a 4D input ``(N, C, H, W)`` (spatial batch norm).\n"
    __doc__ += _BATCH_NORM_BODY
    _input_dims = (4,)


@document(
    name="BatchNorm3d",
    over="depth, height and width",
    stats="N * D * H * W",
    shape=":math:`(N, C, D, H, W)`",
    example="8, 16, 3, 5, 5",
    **_DEFAULTS,
)
class BatchNorm3d(_BatchNorm):
    __doc__ = "Batch normalization over a 5D input ``(N, C, D, H, W)`` (volumetric batch norm).\n"
    __doc__ += _BATCH_NORM_BODY
    _input_dims = (5,)
