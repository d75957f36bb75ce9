"""Normalization layers by name: ``create_norm_layer("batch", 16, dims=2)``.

Every layer is built as ``norm_layer(num_features)`` for the features it will see.
``dims`` is the number of spatial dimensions of those features:

- ``dims=0``: fully connected features, shape ``(N, C)``;
- ``dims=1``: sequences ``(N, C, L)``; ``dims=2``: images ``(N, C, H, W)``;
  ``dims=3``: volumes ``(N, C, D, H, W)``.

=============  =====================================  ==================================
name           convolutional features (dims >= 1)     fully connected features (dims=0)
=============  =====================================  ==================================
``batch``      normlab ``BatchNorm{dims}d(C)``:       normlab ``BatchNorm1d(C)``
               statistics over N and space, per C
``torch-batch``  the same from ``torch.nn`` (the reference)
``layer``      ``GroupNorm(1, C)``: statistics over   ``LayerNorm(C)``
               C and space per sample, affine per C
``group``      ``GroupNorm(G, C)``, G = the largest   ``GroupNorm(G, C)``, same G
               divisor of C with G <= 32 and at
               least 2 channels per group
``instance``   ``InstanceNorm{dims}d(C, affine=True)``  ``LayerNorm(C)``: a single value per
               statistics over space per sample & C   channel has no instance statistics
``rms``        ``RMSNorm(C)`` over the channels at    ``RMSNorm(C)``
               each position (no centering)
``none``       ``nn.Identity()``                      ``nn.Identity()``
=============  =====================================  ==================================

Every name also exists as ``torch-<name>``, built the same way from ``torch.nn``.
An unknown name raises ``ValueError`` listing the valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import nn

import normlab.nn as normlab_nn

NormBuilder = Callable[..., nn.Module]

MAX_GROUPS = 32  # Wu & He (2018) use 32 groups by default


def default_num_groups(num_channels: int) -> int:
    """The largest divisor G of C with G <= 32 and at least two channels per group (1 if none)."""
    candidates = [
        g for g in range(1, MAX_GROUPS + 1) if num_channels % g == 0 and num_channels // g >= 2
    ]
    return max(candidates, default=1)


class ChannelsLast(nn.Module):
    """Applies a norm over the last dimension to channels-first input: ``(N, C, *) -> (N, C, *)``.

    Used to apply ``RMSNorm(C)`` to each position of a convolutional feature map.
    """

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.norm(input.movedim(1, -1)).movedim(-1, 1)


def _builders(lib: ModuleType) -> dict[str, NormBuilder]:
    """Name -> ``builder(num_features, dims, **factory_kwargs)`` for one library of layers."""

    def batch(c: int, dims: int, **kw: Any) -> nn.Module:
        return getattr(lib, f"BatchNorm{max(dims, 1)}d")(c, **kw)

    def layer(c: int, dims: int, **kw: Any) -> nn.Module:
        return lib.LayerNorm(c, **kw) if dims == 0 else lib.GroupNorm(1, c, **kw)

    def group(c: int, dims: int, **kw: Any) -> nn.Module:
        return lib.GroupNorm(default_num_groups(c), c, **kw)

    def instance(c: int, dims: int, **kw: Any) -> nn.Module:
        if dims == 0:
            return lib.LayerNorm(c, **kw)
        return getattr(lib, f"InstanceNorm{dims}d")(c, affine=True, **kw)

    def rms(c: int, dims: int, **kw: Any) -> nn.Module:
        return lib.RMSNorm(c, **kw) if dims == 0 else ChannelsLast(lib.RMSNorm(c, **kw))

    def none(c: int, dims: int, **kw: Any) -> nn.Module:
        return nn.Identity()

    return {
        "batch": batch,
        "layer": layer,
        "group": group,
        "instance": instance,
        "rms": rms,
        "none": none,
    }


NORM_LAYERS: dict[str, NormBuilder] = {
    **_builders(normlab_nn),
    **{f"torch-{name}": builder for name, builder in _builders(nn).items() if name != "none"},
}


def norm_names() -> list[str]:
    """The valid names for :func:`create_norm_layer`."""
    return list(NORM_LAYERS)


def create_norm_layer(
    name: str,
    num_features: int,
    dims: int = 2,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Build the normalization layer called ``name`` for ``num_features`` channels.

    Args:
        name: one of :func:`norm_names` (see the module docstring for what each means).
        num_features: C, the number of channels (conv) or features (fully connected).
        dims: spatial dimensions of the input: 0 for ``(N, C)``, 2 for ``(N, C, H, W)``.
        device, dtype: passed to the layer's constructor.

    Raises:
        ValueError: unknown ``name``, or ``dims`` not in 0..3, or ``num_features < 1``.
    """
    if not isinstance(name, str) or name not in NORM_LAYERS:
        raise ValueError(f"unknown norm layer {name!r}; valid names: {', '.join(NORM_LAYERS)}")
    if dims not in (0, 1, 2, 3):
        raise ValueError(f"dims must be 0 (fully connected), 1, 2 or 3, got {dims!r}")
    if not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
    return NORM_LAYERS[name](num_features, dims, device=device, dtype=dtype)
