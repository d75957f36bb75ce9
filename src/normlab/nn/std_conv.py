"""``StdConv2d``: a 2D convolution with weight standardization (Qiao et al., 2019), on
:func:`normlab.functional.standardize_weight`.

timm's ``StdConv2d`` conventions: a subclass of ``torch.nn.Conv2d`` (the same parameters
``weight``, ``bias`` and ``state_dict`` keys), each output channel's weight standardized
over its fan-in with the biased variance and ``eps`` inside the root, ``eps=1e-6``. Ours
keeps ``torch.nn.Conv2d``'s defaults for ``padding`` (0) and ``bias`` (``True``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normlab.functional.weight_standardization import standardize_weight


class StdConv2d(nn.Conv2d):
    r"""2D convolution with a standardized weight.

    .. math::
        y = \mathrm{conv2d}(x, \hat{W}) + b, \qquad
        \hat{W}_o = \frac{W_o - \mathrm{E}[W_o]}{\sqrt{\mathrm{Var}[W_o] + \epsilon}}

    Mean and (biased) variance of each output channel :math:`o` are taken over its
    ``in_channels / groups * kh * kw`` weights. The stored ``weight`` is the raw one; the
    standardized one is recomputed at each call (so gradients reach the raw weight through
    the standardization).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype: as ``torch.nn.Conv2d``'s.
        eps: added to each channel's weight variance. Default: 1e-6.

    Shape:
        as ``torch.nn.Conv2d``: :math:`(N, C_{in}, H, W) \to (N, C_{out}, H_{out}, W_{out})`.

    Example:
        >>> conv = StdConv2d(3, 8, 3, padding=1)
        >>> conv(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        eps: float = 1e-6,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            **factory_kwargs,
        )
        self.eps = eps

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, standardize_weight(self.weight, self.eps), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"
