"""Lazy batch and instance norms: ``num_features`` is fixed by the first input.

``LazyBatchNorm2d()`` holds uninitialised ``weight``/``bias``/``running_mean``/
``running_var`` (``torch.nn.parameter.UninitializedParameter``/``UninitializedBuffer``) and
``num_features = 0``. Its first call reads ``C = input.shape[1]``, materialises those
tensors with ``C`` elements, resets them (``weight = 1``, ``bias = 0``, statistics 0 and
1) and turns the module into a :class:`normlab.nn.BatchNorm2d`, which then computes the
output. This is ``torch.nn.modules.lazy.LazyModuleMixin``'s mechanism, the same as in
``torch.nn.LazyBatchNorm2d``: the same constructor, the same ``state_dict`` keys before
and after the first call, a lazy ``state_dict`` loads into an initialised layer and back.

As in torch.nn, the lazy *instance* norms default to ``affine=True`` and
``track_running_stats=True`` (unlike ``InstanceNorm*d``), and ``C`` is read from dimension 1
even for an unbatched input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from normlab.nn._base import _NormBase
from normlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from normlab.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, _InstanceNorm

__all__ = [
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
]


class _LazyNormBase(LazyModuleMixin, _NormBase):
    """The uninitialised state of a lazy norm, and its materialisation on the first call.

    Args:
        eps, momentum, affine, track_running_stats, device, dtype, bias: as in
            ``BatchNorm2d``; there is no ``num_features`` (it is the first input's ``C``).
    """

    def __init__(
        self,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        # no tensors yet: num_features 0, and the flags set once the placeholders exist
        super().__init__(0, eps, momentum, False, False, bias=False, **factory)
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = UninitializedParameter(**factory)
            if bias:
                self.bias = UninitializedParameter(**factory)
        if track_running_stats:
            self.running_mean = UninitializedBuffer(**factory)
            self.running_var = UninitializedBuffer(**factory)
            self.num_batches_tracked = torch.tensor(0, dtype=torch.long, device=device)

    def reset_parameters(self) -> None:
        """Reset once materialised; nothing to reset before."""
        if not self.has_uninitialized_params() and self.num_features != 0:
            super().reset_parameters()

    def initialize_parameters(self, input: Tensor) -> None:  # type: ignore[override]
        """Materialise the placeholders with ``C = input.shape[1]`` elements and reset them."""
        if not self.has_uninitialized_params():
            return
        self.num_features = input.shape[1]
        shape = (self.num_features,)
        for tensor in (self.weight, self.bias, self.running_mean, self.running_var):
            if isinstance(tensor, UninitializedParameter | UninitializedBuffer):
                tensor.materialize(shape)
        self.reset_parameters()


class LazyBatchNorm1d(_LazyNormBase, _BatchNorm):
    """:class:`normlab.nn.BatchNorm1d` whose ``num_features`` is the first input's ``C``.

    Shape:
        - Input: :math:`(N, C)` or :math:`(N, C, L)`; output the same.

    Example:
        >>> m = LazyBatchNorm1d()
        >>> y = m(torch.randn(8, 16))
        >>> type(m).__name__, m.num_features
        ('BatchNorm1d', 16)
    """

    cls_to_become = BatchNorm1d
    _input_dims = (2, 3)


class LazyBatchNorm2d(_LazyNormBase, _BatchNorm):
    """:class:`normlab.nn.BatchNorm2d` whose ``num_features`` is the first input's ``C``.

    Shape:
        - Input: :math:`(N, C, H, W)`; output the same.

    Example:
        >>> m = LazyBatchNorm2d()
        >>> y = m(torch.randn(8, 16, 5, 5))
        >>> m.running_mean.shape
        torch.Size([16])
    """

    cls_to_become = BatchNorm2d
    _input_dims = (4,)


class LazyBatchNorm3d(_LazyNormBase, _BatchNorm):
    """:class:`normlab.nn.BatchNorm3d` whose ``num_features`` is the first input's ``C``.

    Shape:
        - Input: :math:`(N, C, D, H, W)`; output the same.

    Example:
        >>> m = LazyBatchNorm3d()
        >>> y = m(torch.randn(2, 16, 3, 5, 5))
    """

    cls_to_become = BatchNorm3d
    _input_dims = (5,)


class LazyInstanceNorm1d(_LazyNormBase, _InstanceNorm):
    """:class:`normlab.nn.InstanceNorm1d` whose ``num_features`` is the first input's ``C``.

    Defaults ``affine=True``, ``track_running_stats=True``, as torch.nn's lazy instance norms.

    Shape:
        - Input: :math:`(N, C, L)`; output the same.

    Example:
        >>> m = LazyInstanceNorm1d()
        >>> y = m(torch.randn(8, 16, 20))
    """

    cls_to_become = InstanceNorm1d
    _no_batch_dim = 2


class LazyInstanceNorm2d(_LazyNormBase, _InstanceNorm):
    """:class:`normlab.nn.InstanceNorm2d` whose ``num_features`` is the first input's ``C``.

    Defaults ``affine=True``, ``track_running_stats=True``, as torch.nn's lazy instance norms.

    Shape:
        - Input: :math:`(N, C, H, W)`; output the same.

    Example:
        >>> m = LazyInstanceNorm2d()
        >>> y = m(torch.randn(8, 16, 5, 5))
    """

    cls_to_become = InstanceNorm2d
    _no_batch_dim = 3


class LazyInstanceNorm3d(_LazyNormBase, _InstanceNorm):
    """:class:`normlab.nn.InstanceNorm3d` whose ``num_features`` is the first input's ``C``.

    Defaults ``affine=True``, ``track_running_stats=True``, as torch.nn's lazy instance norms.

    Shape:
        - Input: :math:`(N, C, D, H, W)`; output the same.

    Example:
        >>> m = LazyInstanceNorm3d()
        >>> y = m(torch.randn(2, 16, 3, 5, 5))
    """

    cls_to_become = InstanceNorm3d
    _no_batch_dim = 4
