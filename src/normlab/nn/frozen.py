"""``FrozenBatchNorm2d`` and :func:`freeze_batch_norm`: batch norm with fixed statistics.

The conventions are torchvision's and detectron2's ``FrozenBatchNorm2d``: four buffers
``weight``, ``bias``, ``running_mean``, ``running_var`` (no parameters, so an optimizer
never sees them and ``requires_grad_`` cannot unfreeze them), evaluation-mode batch norm in
both modes, and a ``state_dict`` that loads from a ``BatchNorm2d``'s (its
``num_batches_tracked`` is dropped). The maths is :func:`normlab.functional.frozen_batch_norm`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normlab.functional.frozen import frozen_batch_norm
from normlab.nn._arguments import check_num_features
from normlab.nn.batchnorm import BatchNorm2d


class FrozenBatchNorm2d(nn.Module):
    r"""Batch norm over ``(N, C, H, W)`` with fixed statistics and affine, in every mode.

    .. math::
        y = \frac{x - \mu_c}{\sqrt{\sigma^2_c + \epsilon}} \gamma_c + \beta_c

    :math:`\mu` (``running_mean``), :math:`\sigma^2` (``running_var``), :math:`\gamma`
    (``weight``) and :math:`\beta` (``bias``) are buffers: saved in the ``state_dict``,
    moved by ``.to()``, never trained. The output equals ``torch.nn.BatchNorm2d`` in
    evaluation mode with the same four tensors, in training mode too.

    Args:
        num_features: :math:`C`, the number of channels.
        eps: added to the variance. Default: 1e-5.
        device, dtype: where and in which dtype the buffers are created.

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: same shape as the input.

    Example:
        >>> bn = torch.nn.BatchNorm2d(8).eval()
        >>> frozen = FrozenBatchNorm2d(8)
        >>> frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
        <All keys matched successfully>
        >>> x = torch.randn(2, 8, 4, 4)
        >>> torch.allclose(frozen(x), bn(x), atol=1e-6)
        True
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_num_features(num_features)
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features, **factory_kwargs))
        self.register_buffer("bias", torch.zeros(num_features, **factory_kwargs))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
        self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")
        return frozen_batch_norm(
            input, self.weight, self.bias, self.running_mean, self.running_var, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

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
        """A ``BatchNorm2d``'s ``state_dict`` loads: its ``num_batches_tracked`` is dropped."""
        state_dict.pop(prefix + "num_batches_tracked", None)  # load_state_dict passes a copy
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def from_batch_norm(cls, bn: nn.Module) -> FrozenBatchNorm2d:
        """A frozen copy of a ``BatchNorm2d`` (torch's or normlab's): same statistics,
        affine (ones and zeros where it has none), ``eps``, device and dtype.

        Raises:
            ValueError: ``bn`` keeps no running statistics (``track_running_stats=False``).
        """
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"cannot freeze {bn}: it keeps no running statistics; "
                "build it with track_running_stats=True"
            )
        running_mean: Tensor = bn.running_mean
        frozen = cls(bn.num_features, bn.eps, running_mean.device, running_mean.dtype)
        with torch.no_grad():
            frozen.running_mean.copy_(running_mean)
            frozen.running_var.copy_(bn.running_var)
            if bn.weight is not None:
                frozen.weight.copy_(bn.weight)
            if bn.bias is not None:
                frozen.bias.copy_(bn.bias)
        return frozen


_BATCH_NORMS_2D = (nn.BatchNorm2d, BatchNorm2d)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` (torch's or normlab's) by a :class:`FrozenBatchNorm2d`
    holding its statistics and affine.

    Children are replaced in place; the return value is ``module`` itself, or the frozen
    layer when ``module`` is a ``BatchNorm2d``.

    Raises:
        ValueError: a ``BatchNorm2d`` keeps no running statistics.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        >>> type(freeze_batch_norm(model)[1]).__name__
        'FrozenBatchNorm2d'
    """
    if isinstance(module, _BATCH_NORMS_2D):
        return FrozenBatchNorm2d.from_batch_norm(module)
    for name, child in module.named_children():
        frozen = freeze_batch_norm(child)
        if frozen is not child:
            setattr(module, name, frozen)
    return module
