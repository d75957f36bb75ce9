"""LayerNorm, GroupNorm, RMSNorm and LocalResponseNorm: drop-ins for ``torch.nn``'s.

Same constructor signatures (``device``, ``dtype``, the keyword ``bias``), parameter names,
``state_dict`` keys, ``reset_parameters``, ``extra_repr`` and errors as ``torch.nn``; the
maths is in :mod:`normlab.functional.layernorm`, :mod:`~normlab.functional.groupnorm`,
:mod:`~normlab.functional.rmsnorm` and :mod:`~normlab.functional.localresponsenorm`. These
layers compute their statistics from the input in training and in evaluation alike, so they
hold no buffers.

As torch's, ``GroupNorm`` and ``RMSNorm`` return a ``channels_last`` (``channels_last_3d``)
output for such an input; other layouts give a contiguous output.
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import torch
from torch import Size, Tensor, nn
from torch.nn import init
from torch.nn.parameter import Parameter

from normlab import kernels
from normlab.errors import UsageError
from normlab.functional import (
    ShapeError,
    group_norm,
    layer_norm,
    local_response_norm,
    rms_norm,
)
from normlab.nn._base import affine_parameters

__all__ = ["GroupNorm", "LayerNorm", "LocalResponseNorm", "RMSNorm"]

_shape_t = int | list[int] | Size


def _as_shape(normalized_shape: _shape_t) -> tuple[int, ...]:
    """An int means ``(int,)``; negative sizes are rejected with torch's message."""
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (int(normalized_shape),)
    shape = tuple(normalized_shape)
    for size in shape:
        if isinstance(size, numbers.Integral) and size < 0:
            raise ShapeError(
                f"Trying to create tensor with negative dimension {size}: {list(shape)}"
            )
    return shape


def _affine_parameters(
    module: nn.Module,
    shape: tuple[int, ...],
    affine: bool,
    bias: bool,
    factory_kwargs: dict[str, Any],
) -> None:
    """Give ``module`` parameters ``weight`` and ``bias`` of ``shape`` (uninitialised), or
    register them as None: without ``affine`` both, without ``bias`` the bias (as torch)."""
    if affine:
        module.weight = Parameter(torch.empty(shape, **factory_kwargs))
    else:
        module.register_parameter("weight", None)
    if affine and bias:
        module.bias = Parameter(torch.empty(shape, **factory_kwargs))
    else:
        module.register_parameter("bias", None)


def _in_channels_last_of(input: Tensor, output: Tensor) -> Tensor:
    """``output`` in ``input``'s channels-last memory format if ``input`` has one (4D or 5D,
    strided channels-last and not contiguous), as torch's kernels allocate their outputs;
    otherwise ``output`` itself. A contiguous input costs one call."""
    if input.is_contiguous() or input.dim() not in (4, 5):
        return output
    layout = torch.channels_last if input.dim() == 4 else torch.channels_last_3d
    if input.is_contiguous(memory_format=layout):
        return output.contiguous(memory_format=layout)
    return output


def _reset_affine(module: nn.Module) -> None:
    """``weight`` to ones and ``bias`` to zeros, where the module has them."""
    if module.weight is not None:
        init.ones_(module.weight)
    if module.bias is not None:
        init.zeros_(module.bias)


class LayerNorm(nn.Module):
    r"""Layer normalization over the last ``D`` dimensions (Ba et al., 2016).

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} * \gamma + \beta

    Mean and biased variance over the last ``D = len(normalized_shape)`` dimensions of each
    sample; :math:`\gamma`, :math:`\beta` are per-element parameters of shape
    ``normalized_shape``. Training and evaluation compute the same thing.

    Args:
        normalized_shape: the trailing shape to normalise over; an int means the last dim.
        eps: added to the variance. Default: 1e-5
        elementwise_affine: learn :math:`\gamma` (ones) and :math:`\beta` (zeros).
            Default: ``True``
        bias: learn :math:`\beta` (only with ``elementwise_affine``). Default: ``True``
        device, dtype: of the parameters.

    Shape:
        - Input: :math:`(N, *)` ending in ``normalized_shape``
        - Output: :math:`(N, *)` (same shape as input)

    Example:
        >>> m = LayerNorm(16)
        >>> y = m(torch.randn(8, 5, 16))
    """

    __constants__: ClassVar[list[str]] = ["normalized_shape", "eps", "elementwise_affine"]
    normalized_shape: tuple[int, ...]
    eps: float
    elementwise_affine: bool

    def __init__(
        self,
        normalized_shape: _shape_t,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _affine_parameters(self, self.normalized_shape, elementwise_affine, bias, factory_kwargs)
        self.reset_parameters()
        kernels.ops()  # loaded here, not inside a torch.compile trace of the first call

    def reset_parameters(self) -> None:
        """Weight to ones, bias to zeros."""
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        weight, bias = affine_parameters(self)
        return layer_norm(input, self.normalized_shape, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
        )


class GroupNorm(nn.Module):
    r"""Group normalization over groups of channels (Wu & He, 2018).

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} * \gamma_c + \beta_c

    The ``C`` channels are split into ``num_groups`` groups of ``C / num_groups``; mean and
    biased variance are taken per sample over each group and all its positions.
    ``GroupNorm(1, C)`` normalises each sample as a whole, ``GroupNorm(C, C)`` each channel
    (like instance norm). :math:`\gamma`, :math:`\beta` are per channel. Training and
    evaluation compute the same thing.

    Args:
        num_groups: number of groups G; must divide ``num_channels``.
        num_channels: number of channels C of the input.
        eps: added to the variance. Default: 1e-5
        affine: learn per-channel :math:`\gamma` (ones) and :math:`\beta` (zeros).
            Default: ``True``
        device, dtype: of the parameters.
        bias: (keyword only) learn :math:`\beta` (only with ``affine``). Default: ``True``

    Shape:
        - Input: :math:`(N, C, *)`
        - Output: :math:`(N, C, *)` (same shape as input)

    Example:
        >>> m = GroupNorm(3, 6)
        >>> y = m(torch.randn(20, 6, 10, 10))
    """

    __constants__: ClassVar[list[str]] = ["num_groups", "num_channels", "eps", "affine"]
    num_groups: int
    num_channels: int
    eps: float
    affine: bool

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        if not isinstance(num_groups, numbers.Integral) or num_groups < 1:
            raise UsageError(f"num_groups must be a positive integer, got {num_groups!r}")
        if num_channels % num_groups != 0:
            raise UsageError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        _affine_parameters(self, (num_channels,), affine, bias, factory_kwargs)
        self.reset_parameters()
        kernels.ops()  # loaded here, not inside a torch.compile trace of the first call

    def reset_parameters(self) -> None:
        """Weight to ones, bias to zeros."""
        _reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        weight, bias = affine_parameters(self)
        output = group_norm(input, self.num_groups, weight, bias, self.eps)
        return _in_channels_last_of(input, output)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )


class RMSNorm(nn.Module):
    r"""Root-mean-square normalization over the last ``D`` dimensions (Zhang & Sennrich, 2019).

    .. math::
        y = \frac{x}{\sqrt{\frac{1}{n}\sum_i x_i^2 + \epsilon}} * \gamma

    No centring and no bias. ``eps=None`` uses ``torch.finfo(t).eps`` of the computation
    dtype ``t`` (float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs).

    Args:
        normalized_shape: the trailing shape to normalise over; an int means the last dim.
        eps: added to the mean square. Default: ``None``
        elementwise_affine: learn :math:`\gamma` (ones). Default: ``True``
        device, dtype: of the parameter.

    Shape:
        - Input: :math:`(N, *)` ending in ``normalized_shape``
        - Output: :math:`(N, *)` (same shape as input)

    Example:
        >>> m = RMSNorm([2, 3])
        >>> y = m(torch.randn(4, 2, 3))
    """

    __constants__: ClassVar[list[str]] = ["normalized_shape", "eps", "elementwise_affine"]
    normalized_shape: tuple[int, ...]
    eps: float | None
    elementwise_affine: bool

    def __init__(
        self,
        normalized_shape: _shape_t,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if self.elementwise_affine:
            self.weight = Parameter(torch.empty(self.normalized_shape, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()
        kernels.ops()  # loaded here, not inside a torch.compile trace of the first call

    def reset_parameters(self) -> None:
        """Weight to ones."""
        if self.elementwise_affine:
            init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return _in_channels_last_of(x, rms_norm(x, self.normalized_shape, self.weight, self.eps))

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class LocalResponseNorm(nn.Module):
    r"""Local response normalization across neighbouring channels (Krizhevsky et al., 2012).

    .. math::
        b_c = a_c \left(k + \frac{\alpha}{n}
        \sum_{c'=\max(0, c-n/2)}^{\min(N-1, c+n/2)} a_{c'}^2\right)^{-\beta}

    Args:
        size: number of neighbouring channels ``n`` in the window.
        alpha: multiplicative factor. Default: 0.0001
        beta: exponent. Default: 0.75
        k: additive factor. Default: 1

    Shape:
        - Input: :math:`(N, C, *)` with at least one spatial dimension
        - Output: :math:`(N, C, *)` (same shape as input)

    Example:
        >>> m = LocalResponseNorm(2)
        >>> y = m(torch.randn(32, 5, 24, 24))
    """

    __constants__: ClassVar[list[str]] = ["size", "alpha", "beta", "k"]
    size: int
    alpha: float
    beta: float
    k: float

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def forward(self, input: Tensor) -> Tensor:
        return local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
