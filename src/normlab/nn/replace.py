"""Swap every normalization layer of a model for another kind from the registry.

``replace_norms(model, "group")`` turns each batch norm, instance norm, layer norm, ... of
any model (torch.nn's layers or normlab's) into what :func:`normlab.nn.create_norm_layer`
builds for ``"group"`` with the same number of channels ``C``, at the same dimensionality
``dims`` (0 for ``(N, C)`` features, 1/2/3 for ``(N, C, *)`` with 1/2/3 spatial dimensions),
on the same device and in the same dtype.

``C`` comes from the layer (``num_features``, ``num_channels``, a one-dimensional
``normalized_shape``). ``dims`` comes from the input the layer sees, recorded during one
forward pass of ``example_input`` when given; without it, from the layer's class:
``*2d``/``*3d`` layers are 2/3, ``InstanceNorm1d`` 1, ``BatchNorm1d`` and a layer or RMS
norm over one last dimension 0 (fully connected). Layers whose ``dims`` cannot be told
that way (``GroupNorm``, ``SyncBatchNorm``, ``LocalResponseNorm``, the registry's
``ChannelsLast`` RMS norm over channels) need ``example_input``. A layer or RMS norm
over the last dimension of a 3D or larger input (channels last, as in a transformer) has
no counterpart among the registry's channels-first layers: refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import batchnorm as torch_batchnorm

import normlab.nn.normalization as normalization
from normlab.nn.registry import NORM_LAYERS, AsImage, ChannelsLast

_CHANNELS_FIRST = (nn.GroupNorm, normalization.GroupNorm, nn.LocalResponseNorm)
_LAST_DIM = (nn.LayerNorm, nn.RMSNorm, normalization.LayerNorm, normalization.RMSNorm)
_LOCAL_RESPONSE = (nn.LocalResponseNorm, normalization.LocalResponseNorm)


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer :func:`replace_norms` replaces: torch.nn's
    and normlab's batch, instance, group, layer, RMS and local response norms, the
    registry's wrappers of them, and normlab's other layers with ``num_features`` or
    ``normalized_shape``."""
    if isinstance(module, torch_batchnorm._NormBase | ChannelsLast | AsImage):
        return True
    if isinstance(module, _CHANNELS_FIRST + _LAST_DIM):
        return True
    own = type(module).__module__.startswith("normlab.nn.")
    return own and (hasattr(module, "num_features") or hasattr(module, "normalized_shape"))


@dataclass(frozen=True)
class _Site:
    """One layer to replace: its qualified name and the module."""

    name: str
    module: nn.Module


def _norm_sites(module: nn.Module, prefix: str = "") -> Iterator[_Site]:
    """Every norm layer under ``module`` (not looking inside a norm layer), pre-order."""
    for name, child in module.named_children():
        qualified = f"{prefix}{name}"
        if is_norm_layer(child):
            yield _Site(qualified, child)
        else:
            yield from _norm_sites(child, qualified + ".")


def _last_dim_size(layer: nn.Module, name: str) -> int:
    shape = tuple(layer.normalized_shape)
    if len(shape) != 1:
        raise ValueError(
            f"{name} ({type(layer).__name__}) normalises over {list(shape)}: only a norm over "
            "one last dimension has a channel count to carry over"
        )
    return int(shape[0])


def _num_channels(layer: nn.Module, name: str, seen: Tensor | None) -> int:
    """``C``: the channels the layer normalises (see the module docstring)."""
    if isinstance(layer, ChannelsLast | AsImage):
        inner = layer.norm if isinstance(layer, ChannelsLast) else layer.layer
        return _num_channels(inner, name, None)
    if isinstance(layer, _LOCAL_RESPONSE):
        if seen is None:
            raise ValueError(f"{name} (LocalResponseNorm) has no channel count: pass example_input")
        return int(seen.shape[1])
    if hasattr(layer, "num_features"):
        if layer.num_features < 1:
            raise ValueError(
                f"{name} ({type(layer).__name__}) is not initialised yet: call it once"
            )
        return int(layer.num_features)
    if hasattr(layer, "num_channels"):
        return int(layer.num_channels)
    return _last_dim_size(layer, name)


_SUFFIX = re.compile(r"([123])d$")


def _dims_from_class(layer: nn.Module, name: str) -> int:
    if isinstance(layer, (AsImage, *_LAST_DIM)):
        return 0
    kind = type(layer).__name__
    match = _SUFFIX.search(kind)
    if match is None or isinstance(layer, ChannelsLast):
        raise ValueError(
            f"cannot tell the input rank of {name} ({kind}) from its type: pass example_input, "
            "an input of the model, to record it"
        )
    dims = int(match.group(1))
    return 0 if dims == 1 and "Instance" not in kind else dims


def _dims(layer: nn.Module, name: str, seen: Tensor | None) -> int:
    """``dims`` of the layer's input: from the input recorded, else from its class."""
    if seen is None:
        return _dims_from_class(layer, name)
    if isinstance(layer, _LAST_DIM) and seen.dim() > 2:
        raise ValueError(
            f"{name} ({type(layer).__name__}) normalises the last dimension of a "
            f"{seen.dim()}D input (channels last): the registry's layers are channels first"
        )
    if isinstance(layer, AsImage):
        return 0
    return seen.dim() - 2 if seen.dim() >= 2 else 0


def _factory(layer: nn.Module) -> dict[str, Any]:
    """The device and dtype of the layer's first floating-point parameter or buffer; the
    device alone of any other tensor (``num_batches_tracked``); nothing without tensors."""
    tensors = [*layer.parameters(), *layer.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    if floating:
        return {"device": floating[0].device, "dtype": floating[0].dtype}
    return {"device": tensors[0].device} if tensors else {}


def _record_inputs(
    model: nn.Module, sites: list[_Site], example_input: Tensor | None
) -> dict[str, Tensor]:
    """The first input each norm layer sees in one forward pass of ``example_input``."""
    if example_input is None:
        return {}
    seen: dict[str, Tensor] = {}

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor):
                seen.setdefault(name, args[0].detach())

        return hook

    handles = [site.module.register_forward_pre_hook(recorder(site.name)) for site in sites]
    training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()  # no running statistics move
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in training:
            module.training = mode
    return seen


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def replace_norms(
    model: nn.Module, name: str, *, example_input: Tensor | None = None, **kwargs: Any
) -> nn.Module:
    """Replace every normalization layer of ``model`` by the registry's ``name``.

    Each new layer is ``NORM_LAYERS[name](C, dims, device=, dtype=, **kwargs)`` (see
    :func:`normlab.nn.create_norm_layer`) with the old layer's ``C``, ``dims``, device and
    dtype (module docstring), and its ``training`` flag. Parameters and statistics start
    afresh (they belong to another kind of layer). ``model`` is changed in place.

    Args:
        model: any model, or a single norm layer.
        name: a registry name (:func:`normlab.nn.norm_names`), e.g. ``"group"``.
        example_input: an input of ``model``; one forward pass in evaluation mode, without
            gradients, records the rank of each norm layer's input (needed for
            ``GroupNorm``, ``SyncBatchNorm``, ``LocalResponseNorm``).
        **kwargs: passed to each new layer's constructor (e.g. ``eps=1e-3``).

    Returns:
        ``model`` with its norm layers replaced, or the new layer if ``model`` is one.

    Raises:
        ValueError: an unknown ``name``, or a layer whose channels or rank cannot be told
            (the message says which and what to pass).

    Example:
        >>> model = replace_norms(LeNet(norm="torch-batch"), "group")
        >>> [type(m).__name__ for _, m in model.norm_layers()]
        ['GroupNorm', 'GroupNorm', 'GroupNorm', 'GroupNorm']
    """
    if not isinstance(name, str) or name not in NORM_LAYERS:
        raise ValueError(f"unknown norm layer {name!r}; valid names: {', '.join(NORM_LAYERS)}")
    if is_norm_layer(model):
        holder = nn.Sequential(model)
        return replace_norms(holder, name, example_input=example_input, **kwargs)[0]
    sites = list(_norm_sites(model))
    seen = _record_inputs(model, sites, example_input)
    for site in sites:
        layer, input = site.module, seen.get(site.name)
        channels = _num_channels(layer, site.name, input)
        dims = _dims(layer, site.name, input)
        new = NORM_LAYERS[name](channels, dims, **_factory(layer), **kwargs)
        new.train(layer.training)
        _set(model, site.name, new)
    return model
