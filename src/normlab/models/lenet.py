"""LeNet with a pluggable normalization layer: the tutorial's network and its variations.

The default, ``LeNet()``, is the tutorial's ``BNLeNetScratch`` (normlab's batch norm
before each sigmoid); ``LeNet(norm="torch-batch")`` is its ``BNLeNet``. The layers live
in ``self.layers`` (an ``nn.Sequential``) at the tutorial's indices, so ``state_dict``
keys match the tutorial's models; a missing norm is an ``nn.Identity`` at the same index.
The convolutions are :class:`normlab.nn.conv.Conv2d` (``nn.Conv2d`` with a cheaper eager-CPU
training path: the same parameters, torch's numbers up to float rounding).

Shapes for a ``(N, 1, 28, 28)`` input::

    conv 5x5 1->6   (N, 6, 24, 24)  norm  act  pool/2 (N, 6, 12, 12)
    conv 5x5 6->16  (N, 16, 8, 8)   norm  act  pool/2 (N, 16, 4, 4)
    flatten         (N, 256)
    linear 256->120 (N, 120)        norm  act
    linear 120->84  (N, 84)         norm  act
    linear 84->C    (N, num_classes)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from normlab import kernels
from normlab.nn.registry import conv_layer, create_norm_layer

NormFactory = Callable[[int, int], nn.Module]  # (num_features, dims) -> layer

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,  # the tutorial's choice
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


class _AvgPool2x2(torch.autograd.Function):
    """2x2 average pool with stride 2 through :mod:`normlab.kernels`: one pass each way."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return kernels.ops().avg_pool2x2_forward(input)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if torch.is_grad_enabled():  # a graph of the backward: differentiable ops
            return grad_out.mul(0.25).repeat_interleave(2, -1).repeat_interleave(2, -2)
        return kernels.ops().avg_pool2x2_backward(grad_out)


class AvgPool2d(nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` with a faster path for LeNet's 2x2 windows with stride 2.

    A 2x2 average is the mean of each window's four values::

        y[n, c, i, j] = (x[n, c, 2i, 2j] + x[n, c, 2i, 2j + 1]
                         + x[n, c, 2i + 1, 2j] + x[n, c, 2i + 1, 2j + 1]) / 4

    Eager on CPU (float32/float64) it is one pass of :mod:`normlab.kernels` each way;
    elsewhere the sum of two strided halves along the width, then along the height, each
    differentiated by autograd. Both run forward and backward faster on CPU than
    ``avg_pool2d`` and its backward (which walk every window); the results equal
    ``avg_pool2d``'s up to float rounding (the four values are summed in another order).
    Any other configuration, an odd height or width, or a non-contiguous input takes
    ``torch.nn.AvgPool2d.forward``.

    Shape:
        input ``(N, C, H, W)``, output ``(N, C, H // 2, W // 2)``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._fast_path_applies(input):
            return super().forward(input)
        if kernels.applies(input):
            return _AvgPool2x2.apply(input)
        n, c, h, w = input.shape
        pairs = input.view(n, c, h, w // 2, 2)
        rows = (pairs[..., 0] + pairs[..., 1]).view(n, c, h // 2, 2, w // 2)
        return (rows[:, :, :, 0] + rows[:, :, :, 1]).mul_(0.25)

    def _fast_path_applies(self, input: torch.Tensor) -> bool:
        return (
            input.dim() == 4
            and input.is_contiguous()
            and input.shape[-2] % 2 == 0
            and input.shape[-1] % 2 == 0
            and self.kernel_size in (2, (2, 2))
            and self.stride in (2, (2, 2))
            and self.padding in (0, (0, 0))
            and self.divisor_override is None
        )


POOLS: dict[str, type[nn.Module]] = {"avg": AvgPool2d, "max": nn.MaxPool2d}
PLACEMENTS = ("before", "after")  # the norm before or after the activation


def _choose(kind: str, value: str, valid: dict[str, object] | tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


class LeNet(nn.Module):
    """The tutorial's LeNet-5 for 28x28 grey images, with a normalization of your choice.

    Args:
        num_classes: outputs of the last linear layer. Default: 10.
        norm: a :func:`normlab.nn.create_norm_layer` name (default ``"batch"``; a name such
            as ``group-ws`` also picks the convolutions, see
            :func:`normlab.nn.registry.conv_layer`), or a
            callable ``norm(num_features, dims) -> nn.Module`` (dims: 2 conv, 0 linear).
        activation: ``sigmoid`` (default), ``relu``, ``tanh`` or ``gelu``.
        pool: ``avg`` (default) or ``max``, 2x2 with stride 2.
        placement: ``before`` (default, as the tutorial) or ``after`` the activation.

    Shape:
        input ``(N, 1, 28, 28)``, output ``(N, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        norm: str | NormFactory = "batch",
        activation: str = "sigmoid",
        pool: str = "avg",
        placement: str = "before",
    ) -> None:
        super().__init__()
        _choose("activation", activation, ACTIVATIONS)
        _choose("pool", pool, POOLS)
        _choose("placement", placement, PLACEMENTS)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if isinstance(norm, str):
            create_norm_layer(norm, 1)  # validates the name before anything is built
            name = norm

            def norm_factory(features: int, dims: int) -> nn.Module:
                return create_norm_layer(name, features, dims=dims)
        elif callable(norm):
            norm_factory = norm
        else:
            raise TypeError(
                f"norm must be a registry name or a callable, got {type(norm).__name__}"
            )
        self.activation, self.pool, self.placement = activation, pool, placement
        conv = conv_layer(norm if isinstance(norm, str) else None)  # group-ws: StdConv2d

        def block(features: int, dims: int) -> list[nn.Module]:
            pair = [norm_factory(features, dims), ACTIVATIONS[activation]()]
            return pair if placement == "before" else pair[::-1]

        self.layers = nn.Sequential(
            conv(1, 6, kernel_size=5),
            *block(6, dims=2),
            POOLS[pool](kernel_size=2, stride=2),
            conv(6, 16, kernel_size=5),
            *block(16, dims=2),
            POOLS[pool](kernel_size=2, stride=2),
            nn.Flatten(),
            nn.Linear(256, 120),
            *block(120, dims=0),
            nn.Linear(120, 84),
            *block(84, dims=0),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def norm_layers(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of each normalization layer, in order (none for ``norm="none"``)."""
        skip = (
            nn.Conv2d,
            nn.Linear,
            nn.Flatten,
            nn.Identity,
            *ACTIVATIONS.values(),
            *POOLS.values(),
        )
        return [(f"layers.{i}", m) for i, m in enumerate(self.layers) if not isinstance(m, skip)]
