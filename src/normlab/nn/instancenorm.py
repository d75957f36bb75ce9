"""``InstanceNorm1d/2d/3d``: drop-ins for ``torch.nn``'s, on ``normlab.functional.instance_norm``.

Each channel of each sample is normalised over its own spatial positions. Inputs without a
batch dimension (``(C, L)``, ``(C, H, W)``, ``(C, D, H, W)``) are accepted as in ``torch.nn``.
Unlike batch norm the defaults are ``affine=False`` and ``track_running_stats=False``, and
``num_batches_tracked`` is never advanced (``momentum=None`` means momentum 0).

``_InstanceNorm`` is also a ``torch.nn.modules.instancenorm._InstanceNorm`` (see
:mod:`normlab.nn._base`), so that tools that find instance norms by type find these ones.
Bad inputs raise torch.nn's exception types with its messages, in its order.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules import instancenorm as torch_instancenorm

from normlab.functional import ShapeError, instance_norm
from normlab.nn._base import (
    _NormBase,
    check_floating,
    check_mixed_dtype,
    document,
)

_INSTANCE_NORM_BODY = r"""
    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} * \gamma + \beta

    Mean and (biased) variance are computed per sample and per channel over {over};
    :math:`\gamma` and :math:`\beta` are learnable vectors of size :math:`C` if ``affine``.
    By default the instance statistics are used in training and evaluation alike; with
    ``track_running_stats=True`` running estimates (averaged over the batch) are kept in
    training and used in evaluation (``model.eval()``).

    {momentum_note}

    Args:
        {args}

    Shape:
        - Input: {shape}
        - Output: same shape as the input.

    Example:
        >>> m = {name}(16, affine=True)
        >>> y = m(torch.randn({example}))
        >>> y.shape
        torch.Size([{example}])
"""


class _InstanceNorm(_NormBase, torch_instancenorm._InstanceNorm):
    """Instance norm over ``(N, C, *)`` or unbatched ``(C, *)`` input."""

    _no_batch_dim: int  # the input rank without a batch dimension

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )

    def _get_no_batch_dim(self) -> int:
        return self._no_batch_dim

    def _check_input_dim(self, input: Tensor) -> None:
        valid = (self._no_batch_dim, self._no_batch_dim + 1)
        if input.dim() not in valid:
            raise ValueError(
                f"expected {valid[0]}D or {valid[1]}D input (got {input.dim()}D input)"
            )

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        return instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )

    def _handle_no_batch_input(self, input: Tensor) -> Tensor:
        """An unbatched ``(C, *)`` input normalised as a batch of one."""
        return self._apply_instance_norm(input.unsqueeze(0)).squeeze(0)

    def _check_num_features(self, input: Tensor) -> bool:
        """Whether the channel count is ``num_features``: torch's ``ValueError`` if not, with
        ``affine``, and its warning without (the count is not used then)."""
        feature_dim = input.dim() - self._no_batch_dim
        if input.size(feature_dim) == self.num_features:
            return True
        if self.affine:
            raise ValueError(
                f"expected input's size at dim={feature_dim} to match num_features"
                f" ({self.num_features}), but got: {input.size(feature_dim)}."
            )
        warnings.warn(
            f"input's size at dim={feature_dim} does not match num_features. "
            "You can silence this warning by not passing in num_features, "
            "which is not used because affine=False",
            stacklevel=4,
        )
        return False

    def _check_input(self, input: Tensor) -> None:
        """torch.nn's checks, in its order: the rank and channel count (``ValueError``, or a
        warning), more than one spatial element with instance statistics (``ValueError``),
        running statistics of one element per channel (``RuntimeError``, counted per
        sample and channel as torch does), a floating-point input and the CPU's dtype rule
        for ``weight`` and ``bias`` (``NotImplementedError``/``RuntimeError``).

        The common call (the module's channel count, a floating-point input in the dtype of
        ``weight``) returns after a few comparisons.
        """
        self._check_input_dim(input)
        channels_match = self._check_num_features(input)
        first = self.weight if self.affine else None  # torch's first parameter, if any
        if (
            (channels_match or self.running_mean is None)
            and input.is_floating_point()
            and (first is None or input.dtype == first.dtype)
        ):
            return
        if input.numel() == 0:
            return
        batched = input if input.dim() > self._no_batch_dim else input.unsqueeze(0)
        if (self.training or not self.track_running_stats) and batched[0, 0].numel() == 1:
            raise ValueError(
                "Expected more than 1 spatial element when training, "
                f"got input size {batched.size()}"
            )
        if not channels_match and self.running_mean is not None:
            n, c = batched.shape[0], batched.shape[1]
            raise ShapeError(
                f"running_mean should contain {n * c} elements not {n * self.running_mean.numel()}"
            )
        check_floating(input, "batch_norm")
        check_mixed_dtype(input, (self.weight, self.bias))

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        if input.dim() == self._no_batch_dim:
            return self._handle_no_batch_input(input)
        return self._apply_instance_norm(input)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Reject running statistics from pre-0.4 checkpoints when they are not tracked."""
        version = local_metadata.get("version")
        if version is None and not self.track_running_stats:
            keys = [prefix + n for n in ("running_mean", "running_var") if prefix + n in state_dict]
            if keys:
                klass = type(self).__name__
                names = " and ".join(f'"{k}"' for k in keys)
                error_msgs.append(
                    f"Unexpected running stats buffer(s) {names} for {klass} "
                    "with track_running_stats=False. If state_dict is a "
                    "checkpoint saved before 0.4.0, this may be expected "
                    f"because {klass} does not track running stats by default "
                    "since 0.4.0. Please remove these keys from state_dict. If "
                    "the running stats are actually needed, instead set "
                    f"track_running_stats=True in {klass} to enable them. See "
                    f"the documentation of {klass} for details."
                )
                for key in keys:
                    state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


_DEFAULTS = {"affine": "``False``", "track": "``False``"}


@document(
    name="InstanceNorm1d",
    over="the length",
    shape=":math:`(N, C, L)` or :math:`(C, L)`",
    example="8, 16, 20",
    **_DEFAULTS,
)
class InstanceNorm1d(_InstanceNorm):
    __doc__ = "Instance normalization over a 3D ``(N, C, L)`` or 2D unbatched input.\n"
    __doc__ += _INSTANCE_NORM_BODY
    _no_batch_dim = 2


@document(
    name="InstanceNorm2d",
    over="height and width",
    shape=":math:`(N, C, H, W)` or :math:`(C, H, W)`",
    example="8, 16, 5, 5",
    **_DEFAULTS,
)
class InstanceNorm2d(_InstanceNorm):
    __doc__ = "Instance normalization over a 4D ``(N, C, H, W)`` or 3D unbatched input.\n"
    __doc__ += _INSTANCE_NORM_BODY
    _no_batch_dim = 3


@document(
    name="InstanceNorm3d",
    over="depth, height and width",
    shape=":math:`(N, C, D, H, W)` or :math:`(C, D, H, W)`",
    example="8, 16, 3, 5, 5",
    **_DEFAULTS,
)
class InstanceNorm3d(_InstanceNorm):
    __doc__ = "Instance normalization over a 5D ``(N, C, D, H, W)`` or 4D unbatched input.\n"
    __doc__ += _INSTANCE_NORM_BODY
    _no_batch_dim = 4
