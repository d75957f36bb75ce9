"""``EvoNorm2dB0`` and ``EvoNorm2dS0`` (Liu et al., 2020), on
:func:`normlab.functional.evonorm_b0` and :func:`normlab.functional.evonorm_s0`.

Parameters ``weight`` (ones), ``bias`` (zeros) and ``v`` (ones), each of shape ``(C,)``,
and for B0 the buffer ``running_var`` (ones): timm's ``EvoNorm2dB0``/``EvoNorm2dS0`` names
and ``state_dict`` keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import init

from normlab.functional.evonorm import check_groups, evonorm_b0, evonorm_s0
from normlab.nn._arguments import check_num_features


def _check_4d(input: Tensor) -> None:
    if input.dim() != 4:
        raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class _EvoNorm(nn.Module):
    """``weight``, ``bias``, ``v``: ``(C,)`` parameters, initialised to 1, 0, 1."""

    def __init__(self, num_features: int, eps: float, factory: dict[str, Any]) -> None:
        super().__init__()
        check_num_features(num_features)
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        self.v = nn.Parameter(torch.empty(num_features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``weight = v = 1``, ``bias = 0``."""
        init.ones_(self.weight)
        init.zeros_(self.bias)
        init.ones_(self.v)


class EvoNorm2dB0(_EvoNorm):
    r"""EvoNorm-B0 over ``(N, C, H, W)``: batch-dependent normalization and activation.

    .. math::
        y = \frac{x}{\max\left(\sqrt{\mathrm{Var}_{N,H,W}[x] + \epsilon},\;
        v_c x + \sqrt{\mathrm{Var}_{H,W}[x] + \epsilon}\right)} \gamma_c + \beta_c

    Both variances are biased, per channel. In training the batch variance is used and
    ``running_var`` moves towards its unbiased value (``momentum`` the batch's weight, as
    in batch norm); in evaluation ``running_var`` replaces it.

    Args:
        num_features: :math:`C`, the number of channels.
        momentum: weight of the batch in ``running_var``. Default: 0.1.
        eps: added to both variances. Default: 1e-5.
        device, dtype: where and in which dtype parameters and buffers are created.

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: same shape as the input.

    Example:
        >>> m = EvoNorm2dB0(8)
        >>> m(torch.randn(4, 8, 5, 5)).shape
        torch.Size([4, 8, 5, 5])
    """

    running_var: Tensor

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.1,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(num_features, eps, factory)
        self.momentum = momentum
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def forward(self, input: Tensor) -> Tensor:
        _check_4d(input)
        return evonorm_b0(
            input,
            self.running_var,
            self.weight,
            self.bias,
            self.v,
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"


class EvoNorm2dS0(_EvoNorm):
    r"""EvoNorm-S0 over ``(N, C, H, W)``: batch-independent normalization and activation.

    .. math::
        y = \frac{x\,\sigma(v_c x)}{\sqrt{\mathrm{Var}_{group}[x] + \epsilon}} \gamma_c + \beta_c

    The variance is the biased one over each sample's group of ``C / groups`` channels and
    all positions, as in group norm; the same in training and evaluation.

    Args:
        num_features: :math:`C`, the number of channels.
        groups: number of groups; must divide :math:`C`. Default: 32.
        eps: added to the variance. Default: 1e-5.
        device, dtype: where and in which dtype the parameters are created.

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: same shape as the input.

    Example:
        >>> m = EvoNorm2dS0(8, groups=4)
        >>> m(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(
        self,
        num_features: int,
        groups: int = 32,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_num_features(num_features)
        check_groups(num_features, groups)
        super().__init__(num_features, eps, {"device": device, "dtype": dtype})
        self.groups = groups

    def forward(self, input: Tensor) -> Tensor:
        _check_4d(input)
        return evonorm_s0(input, self.weight, self.bias, self.v, self.groups, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, groups={self.groups}, eps={self.eps}"
