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

Every name above also exists as ``torch-<name>``, built the same way from ``torch.nn``.

Layers ``torch.nn`` lacks (normlab only, no ``torch-`` twin); a layer defined for images
takes fully connected features as 1x1 images (:class:`AsImage`) and refuses ``dims`` 1, 3:

================  ==========================================================================
name              layer
================  ==========================================================================
``frozen-batch``  ``FrozenBatchNorm2d(C)``: fixed statistics (running mean 0, variance 1
                  until a ``state_dict`` is loaded), evaluation-mode batch norm
``renorm``        ``BatchRenorm{dims}d(C)`` (``1d`` for fully connected): batch renorm,
                  ``rmax=3``, ``dmax=5``, momentum 0.01 (Ioffe 2017)
``ghost``         ``GhostBatchNorm{dims}d(C, 16)`` (``1d`` for fully connected): batch norm
                  over each chunk of 16 samples (Hoffer et al. 2017); not for ``dims=3``
``group-ws``      ``group``'s ``GroupNorm(G, C)``, and the model's convolutions become
                  ``StdConv2d`` (weight standardization, Qiao et al. 2019): a registry
                  name may bring its convolution (:data:`CONVOLUTIONS`,
                  :func:`conv_layer`), which models built by name use
``frn``           ``FilterResponseNorm2d(C)`` with its TLU (Singh & Krishnan 2020); at
                  ``dims=0`` with a learned eps, as the paper advises for 1x1 maps
``evonorm-b0``    ``EvoNorm2dB0(C)`` (Liu et al. 2020), batch and instance variance
``evonorm-s0``    ``EvoNorm2dS0(C, G)``, G as ``group``'s (Liu et al. 2020)
``dyt``           ``DynamicTanh(C)`` over the channels at each position, as ``rms``
                  (Zhu et al. 2025)
================  ==========================================================================

An unknown name raises ``ValueError`` listing the valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from torch import nn

from normlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from normlab.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from normlab.nn.normalization import GroupNorm, LayerNorm, LocalResponseNorm, RMSNorm

# normlab's torch.nn twins under torch.nn's class names, read like ``torch.nn`` itself
_NORMLAB_TWINS = SimpleNamespace(
    BatchNorm1d=BatchNorm1d, BatchNorm2d=BatchNorm2d, BatchNorm3d=BatchNorm3d,
    InstanceNorm1d=InstanceNorm1d, InstanceNorm2d=InstanceNorm2d,
    InstanceNorm3d=InstanceNorm3d, GroupNorm=GroupNorm, LayerNorm=LayerNorm,
    LocalResponseNorm=LocalResponseNorm, RMSNorm=RMSNorm,
)  # fmt: skip

NormBuilder = Callable[..., nn.Module]

MAX_GROUPS = 32  # Wu & He (2018) use 32 groups by default
GHOST_VIRTUAL_BATCH_SIZE = 16  # the "ghost" entry's: four chunks of the lab's batch of 64


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


def _builders(lib: ModuleType | SimpleNamespace) -> dict[str, NormBuilder]:
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


class AsImage(nn.Module):
    """Applies a layer of images to fully connected features: ``(N, C)`` is seen as
    ``(N, C, 1, 1)``, a 1x1 image per sample, and the output viewed back as ``(N, C)``.

    Used for layers defined on images only (frozen batch norm, FRN, EvoNorm) at ``dims=0``.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.layer(input[:, :, None, None]).flatten(1)


def _images_only(
    name: str,
    build: Callable[..., nn.Module],
    fully_connected: Callable[..., nn.Module] | None = None,
) -> NormBuilder:
    """A builder for a layer of ``(N, C, H, W)`` images: ``build(C)`` at ``dims=2``, through
    :class:`AsImage` at ``dims=0`` (``fully_connected(C)`` if given, else ``build(C)``),
    refused at ``dims`` 1 and 3."""

    def builder(c: int, dims: int, **kw: Any) -> nn.Module:
        if dims == 2:
            return build(c, **kw)
        if dims == 0:
            return AsImage((fully_connected or build)(c, **kw))
        raise ValueError(
            f"norm layer {name!r} is defined for images (dims=2) and fully "
            f"connected features (dims=0), not dims={dims}"
        )

    return builder


def _beyond_torch() -> dict[str, NormBuilder]:
    """normlab's layers that ``torch.nn`` lacks (no ``torch-`` twin)."""
    import normlab.nn.normalization as normalization
    import normlab.nn.renorm as renorm
    from normlab.nn.dynamic_tanh import DynamicTanh
    from normlab.nn.evonorm import EvoNorm2dB0, EvoNorm2dS0
    from normlab.nn.filter_response import FilterResponseNorm2d
    from normlab.nn.frozen import FrozenBatchNorm2d
    from normlab.nn.ghost import GhostBatchNorm1d, GhostBatchNorm2d

    def batch_renorm(c: int, dims: int, **kw: Any) -> nn.Module:
        return getattr(renorm, f"BatchRenorm{max(dims, 1)}d")(c, **kw)

    def ghost(c: int, dims: int, **kw: Any) -> nn.Module:
        if dims == 3:
            raise ValueError("norm layer 'ghost' is defined for dims 0, 1 and 2, not dims=3")
        layer = GhostBatchNorm2d if dims == 2 else GhostBatchNorm1d
        return layer(c, GHOST_VIRTUAL_BATCH_SIZE, **kw)

    def group(c: int, dims: int, **kw: Any) -> nn.Module:
        return normalization.GroupNorm(default_num_groups(c), c, **kw)

    def evonorm_s0(c: int, **kw: Any) -> nn.Module:
        return EvoNorm2dS0(c, groups=default_num_groups(c), **kw)

    def dyt(c: int, dims: int, **kw: Any) -> nn.Module:
        return DynamicTanh(c, **kw) if dims == 0 else ChannelsLast(DynamicTanh(c, **kw))

    return {
        "frozen-batch": _images_only("frozen-batch", FrozenBatchNorm2d),
        "renorm": batch_renorm,
        "ghost": ghost,
        "group-ws": group,
        # a 1x1 map is its own mean square: the paper learns eps there
        "frn": _images_only(
            "frn", FilterResponseNorm2d, partial(FilterResponseNorm2d, learnable_eps=True)
        ),
        "evonorm-b0": _images_only("evonorm-b0", EvoNorm2dB0),
        "evonorm-s0": _images_only("evonorm-s0", evonorm_s0),
        "dyt": dyt,
    }


def _std_conv() -> type[nn.Conv2d]:
    from normlab.nn.std_conv import StdConv2d

    return StdConv2d


#: Norm names whose models swap their convolutions too (see :func:`conv_layer`).
CONVOLUTIONS: dict[str, type[nn.Conv2d]] = {"group-ws": _std_conv()}

NORM_LAYERS: dict[str, NormBuilder] = {
    **_builders(_NORMLAB_TWINS),
    **_beyond_torch(),
    **{f"torch-{name}": builder for name, builder in _builders(nn).items() if name != "none"},
}


def conv_layer(name: str | None) -> type[nn.Conv2d]:
    """The convolution a model builds next to the norm layer ``name``: most norms leave the
    convolutions as they are (normlab's ``Conv2d``, torch's numbers); a name in
    :data:`CONVOLUTIONS` brings its own, e.g. ``group-ws``'s weight-standardized one.

    Raises:
        ValueError: an unknown ``name`` (``None``, a custom norm, gets the plain one).
    """
    from normlab.nn.conv import Conv2d

    if name is not None and name not in NORM_LAYERS:
        raise ValueError(f"unknown norm layer {name!r}; valid names: {', '.join(NORM_LAYERS)}")
    return CONVOLUTIONS.get(name or "", Conv2d)


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
