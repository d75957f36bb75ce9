"""Oracles for the layers ``torch.nn`` lacks: each formula written directly in torch operations.

Every class here has the name, constructor, parameters, buffers and ``state_dict`` keys of
the normlab layer it checks, and computes the published formula the plainest way: each
statistic by its definition (``mean``, ``var``), gradients by autograd, no fused paths,
no shortcuts. :mod:`normlab.testing.parity` builds one next to the normlab layer, loads the
same ``state_dict`` and compares outputs, gradients and buffers step by step; the tests run
them in float64 as the exact answer.

=========================  ==========================================================
class                      formula (``x``: the input, ``(N, C, *)``)
=========================  ==========================================================
``FrozenBatchNorm2d``      ``torch.nn.functional.batch_norm(x, ..., training=False)``:
                           ``torch.nn.BatchNorm2d`` in evaluation mode
=========================  ==========================================================
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """``torch.nn.BatchNorm2d``'s evaluation-mode computation over four buffers."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
