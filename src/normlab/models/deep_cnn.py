"""A narrow CNN of any depth, plain or residual, with a pluggable normalization.

The network the lab's depth experiment trains: depth is the only thing that grows, so
the effect of normalization and of skip connections on trainability shows alone. Every
block is pre-activation (He et al. 2016, "Identity Mappings in Deep Residual Networks"):
two 3x3 convolutions, each preceded by the norm and a ReLU,

.. math::
    f(x) = W_2 * \\mathrm{relu}(\\mathrm{norm}_2(W_1 * \\mathrm{relu}(\\mathrm{norm}_1(x))))

and a block returns :math:`x + f(x)` (residual) or :math:`f(x)` (plain). The
convolutions have no bias (the next norm would cancel it; without a norm a block at zero
weights is then exactly the identity) and He's initialisation
:math:`W \\sim \\mathcal N(0, 2 / \\mathrm{fan\\_in})`, which keeps the second moment of
the signal constant through a ReLU and a convolution. ``zero_init_last`` sets each
block's second convolution to zero, so every residual block starts as the identity
(Fixup, Zhang et al. 2019; SkipInit, De & Smith 2020; with batch norm the same idea
zeroes the last norm's weight, Goyal et al. 2017).

Shapes for a ``(N, 1, 28, 28)`` input, ``widths=(16, 32)``, ``depth`` a multiple of 4
(``depth`` counts the 3x3 convolutions of the two stages, ``depth / 4`` blocks each)::

    stem  conv 3x3 stride 2, 1->16      (N, 16, 14, 14)
    stage 1: depth/4 blocks             (N, 16, 14, 14)
    down  norm relu conv 3x3 stride 2   (N, 32, 7, 7)
    stage 2: depth/4 blocks             (N, 32, 7, 7)
    head  norm relu mean over H, W      (N, 32)
          linear 32->C                  (N, num_classes)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from normlab.nn.registry import create_norm_layer

__all__ = ["BLOCK_CONVS", "STAGES", "DeepCNN", "PreActBlock"]

BLOCK_CONVS = 2  # 3x3 convolutions per block
STAGES = 2  # stages of blocks: at 14x14 and at 7x7


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 3x3 convolution, 'same' padding, with He's normal initialisation."""
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    return conv


class PreActBlock(nn.Module):
    """norm -> ReLU -> conv 3x3 -> norm -> ReLU -> conv 3x3, with or without the skip.

    Formula: ``y = x + f(x)`` (``residual``) or ``y = f(x)``, with ``f`` as in the module
    docstring.

    Args:
        channels: C, in and out.
        norm: a :func:`normlab.nn.create_norm_layer` name (``"none"``: no norm).
        residual: add the input to the branch's output.
        zero_init_last: start the second convolution at zero (a residual block is then the
            identity at initialisation; a plain one outputs zeros).

    Shape:
        input ``(N, C, H, W)``, output ``(N, C, H, W)``.
    """

    def __init__(
        self, channels: int, norm: str, residual: bool, zero_init_last: bool = False
    ) -> None:
        super().__init__()
        self.residual = residual
        self.branch = nn.Sequential(
            create_norm_layer(norm, channels, dims=2),
            nn.ReLU(),
            _conv3x3(channels, channels),
            create_norm_layer(norm, channels, dims=2),
            nn.ReLU(),
            _conv3x3(channels, channels),
        )
        if zero_init_last:
            nn.init.zeros_(self.branch[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class DeepCNN(nn.Module):
    """A two-stage pre-activation CNN for 28x28 grey images, plain or residual.

    Args:
        depth: 3x3 convolutions in the stages, a positive multiple of 4 (``depth / 4``
            blocks per stage). The stem, the downsampling convolution and the classifier
            come on top. Default: 8.
        residual: blocks with the identity skip (a ResNet) or without (a plain network).
        norm: a :func:`normlab.nn.create_norm_layer` name for every norm layer
            (``"none"`` for none). Default: ``"batch"``.
        zero_init_last: each block's second convolution starts at zero.
        widths: channels of the two stages. Default: ``(16, 32)``.
        num_classes: outputs of the classifier. Default: 10.

    Shape:
        input ``(N, 1, 28, 28)``, output ``(N, num_classes)``.

    Example:
        >>> model = DeepCNN(depth=8, residual=True, norm="none", zero_init_last=True)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 8,
        residual: bool = True,
        norm: str = "batch",
        zero_init_last: bool = False,
        widths: Sequence[int] = (16, 32),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        _check_arguments(depth, widths, num_classes)
        create_norm_layer(norm, 1)  # an unknown name fails before anything is built
        first, second = (int(w) for w in widths)
        blocks = depth // (BLOCK_CONVS * STAGES)
        self.depth, self.residual, self.norm = depth, residual, norm
        self.stem = _conv3x3(1, first, stride=2)
        self.stage1 = nn.Sequential(
            *(PreActBlock(first, norm, residual, zero_init_last) for _ in range(blocks))
        )
        self.down = nn.Sequential(
            create_norm_layer(norm, first, dims=2), nn.ReLU(), _conv3x3(first, second, stride=2)
        )
        self.stage2 = nn.Sequential(
            *(PreActBlock(second, norm, residual, zero_init_last) for _ in range(blocks))
        )
        self.head = nn.Sequential(create_norm_layer(norm, second, dims=2), nn.ReLU())
        self.classifier = nn.Linear(second, num_classes)

    def trunk(self) -> list[tuple[str, nn.Module, int]]:
        """``(name, module, layers)`` of the stem, every block and the downsampling, in
        order: the points whose outputs carry the signal from layer to layer, with the
        number of weighted layers from the input up to each (stem 1, a block 2 more, the
        downsampling 1 more)."""
        points: list[tuple[str, nn.Module, int]] = [("stem", self.stem, 1)]
        layers = 1
        for i, block in enumerate(self.stage1):
            layers += BLOCK_CONVS
            points.append((f"stage1.{i}", block, layers))
        layers += 1
        points.append(("down", self.down, layers))
        for i, block in enumerate(self.stage2):
            layers += BLOCK_CONVS
            points.append((f"stage2.{i}", block, layers))
        return points

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.classifier(self.head(x).mean(dim=(2, 3)))

    def extra_repr(self) -> str:
        return f"depth={self.depth}, residual={self.residual}, norm={self.norm!r}"


def _check_arguments(depth: object, widths: Sequence[int], num_classes: object) -> None:
    per_stage = BLOCK_CONVS * STAGES
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < per_stage:
        raise ValueError(f"depth must be a positive multiple of {per_stage}, got {depth!r}")
    if depth % per_stage:
        raise ValueError(f"depth must be a positive multiple of {per_stage}, got {depth!r}")
    if len(widths) != STAGES or any(
        isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths
    ):
        raise ValueError(f"widths must be {STAGES} positive integers, got {tuple(widths)!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
