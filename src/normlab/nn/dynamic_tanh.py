"""``DynamicTanh`` (Zhu, Chen, He, LeCun & Liu, 2025) and :func:`convert_layer_norms_to_dyt`,
on :func:`normlab.functional.dynamic_tanh`.

The authors' conventions: parameters ``alpha`` (one element, ``alpha_init_value``),
``weight`` (ones) and ``bias`` (zeros) of the normalized shape; their conversion swaps
every ``LayerNorm`` for a freshly initialised ``DynamicTanh`` of the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import init

from normlab.functional.dynamic_tanh import dynamic_tanh
from normlab.nn.normalization import LayerNorm


class DynamicTanh(nn.Module):
    r"""Dynamic Tanh over the last dimensions: a statistics-free stand-in for layer norm.

    .. math::
        y = \gamma \tanh(\alpha x) + \beta

    :math:`\alpha` is one learned scalar, :math:`\gamma` and :math:`\beta` learned tensors
    of ``normalized_shape``, applied element-wise over the trailing dimensions.

    Args:
        normalized_shape: the trailing shape, an ``int`` or a sequence (as ``LayerNorm``'s).
        alpha_init_value: the initial :math:`\alpha`. Default: 0.5 (the paper's for
            non-LLM models).
        device, dtype: where and in which dtype the parameters are created.

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`
        - Output: same shape as the input.

    Example:
        >>> dyt = DynamicTanh(16)
        >>> y = dyt(torch.randn(4, 10, 16))
        >>> bool(y.abs().max() <= 1)  # weight 1, bias 0
        True
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        alpha_init_value: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape = tuple(shape)
        if not self.normalized_shape or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.normalized_shape
        ):
            raise ValueError(
                f"normalized_shape must be positive integers, got {normalized_shape!r}"
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.alpha_init_value = alpha_init_value
        self.alpha = nn.Parameter(torch.empty(1, **factory))
        self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
        self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``alpha = alpha_init_value``, ``weight = 1``, ``bias = 0``."""
        init.constant_(self.alpha, self.alpha_init_value)
        init.ones_(self.weight)
        init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        k = len(self.normalized_shape)
        if tuple(input.shape[input.dim() - k :]) != self.normalized_shape:
            raise ValueError(
                f"expected input with trailing shape {list(self.normalized_shape)}, "
                f"got input of size {list(input.shape)}"
            )
        return dynamic_tanh(input, self.alpha, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, alpha_init_value={self.alpha_init_value}"


_LAYER_NORMS = (nn.LayerNorm, LayerNorm)


def convert_layer_norms_to_dyt(module: nn.Module, alpha_init_value: float = 0.5) -> nn.Module:
    """Replace every ``LayerNorm`` (torch's or normlab's) by a :class:`DynamicTanh` of the
    same ``normalized_shape``, device and dtype, freshly initialised (a layer norm's affine
    does not carry over: the two layers use it on differently scaled values).

    Children are replaced in place; the return value is ``module`` itself, or the new layer
    when ``module`` is a ``LayerNorm``.

    Example:
        >>> block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
        >>> type(convert_layer_norms_to_dyt(block)[1]).__name__
        'DynamicTanh'
    """
    if isinstance(module, _LAYER_NORMS):
        reference = next(iter(module.parameters()), None)
        return DynamicTanh(
            module.normalized_shape,
            alpha_init_value,
            device=None if reference is None else reference.device,
            dtype=None if reference is None else reference.dtype,
        )
    for name, child in module.named_children():
        converted = convert_layer_norms_to_dyt(child, alpha_init_value)
        if converted is not child:
            setattr(module, name, converted)
    return module
