"""``FilterResponseNorm2d``: filter response normalization with its TLU (Singh & Krishnan,
2020), on :func:`normlab.functional.filter_response_norm`.

Parameters ``weight`` (ones), ``bias`` (zeros), ``tau`` (zeros), each of shape ``(C,)`` as
timm's ``FilterResponseNormTlu2d`` stores them; with ``learnable_eps`` also ``eps_learned``,
a one-element parameter, and the layer uses ``eps + |eps_learned|``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import init

from normlab.functional.filter_response import filter_response_norm
from normlab.nn._arguments import check_num_features

#: ``eps_learned``'s initial value: |x| has no gradient at 0, so it starts just off it.
LEARNED_EPS_INIT = 1e-4


class FilterResponseNorm2d(nn.Module):
    r"""Filter response normalization over ``(N, C, H, W)``, then a thresholded linear unit.

    .. math::
        \nu^2 = \frac{1}{HW} \sum_{h, w} x_{nchw}^2, \qquad
        y = \max\left(\gamma_c \frac{x}{\sqrt{\nu^2 + \epsilon}} + \beta_c,\; \tau_c\right)

    Every sample and channel is normalised by the mean square of its own responses: no
    batch statistics, no running statistics, the same in training and evaluation. The TLU
    (:math:`\max(\cdot, \tau)`) replaces the activation that would follow.

    Args:
        num_features: :math:`C`, the number of channels.
        eps: :math:`\epsilon`. Default: 1e-6.
        learnable_eps: learn :math:`\epsilon = \text{eps} + |\epsilon_l|` (the paper's advice
            for 1x1 feature maps); ``eps_learned`` starts at 1e-4. Default: ``False``.
        device, dtype: where and in which dtype the parameters are created.

    Shape:
        - Input: :math:`(N, C, H, W)`
        - Output: same shape as the input.

    Example:
        >>> frn = FilterResponseNorm2d(8)
        >>> y = frn(torch.randn(2, 8, 5, 5))
        >>> bool((y >= frn.tau.view(1, -1, 1, 1)).all())
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        learnable_eps: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_num_features(num_features)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.learnable_eps = learnable_eps
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        self.tau = nn.Parameter(torch.empty(num_features, **factory))
        if learnable_eps:
            self.eps_learned = nn.Parameter(torch.empty(1, **factory))
        else:
            self.register_parameter("eps_learned", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``weight = 1``, ``bias = tau = 0``, ``eps_learned = 1e-4``."""
        init.ones_(self.weight)
        init.zeros_(self.bias)
        init.zeros_(self.tau)
        if self.eps_learned is not None:
            init.constant_(self.eps_learned, LEARNED_EPS_INIT)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")
        eps: float | Tensor = self.eps
        if self.eps_learned is not None:
            eps = self.eps + self.eps_learned.abs()
        return filter_response_norm(input, self.weight, self.bias, self.tau, eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, learnable_eps={self.learnable_eps}"
