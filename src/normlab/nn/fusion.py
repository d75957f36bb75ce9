"""Batch norm folded into the convolution or linear layer before it, for inference.

In evaluation a batch norm is a fixed affine map per channel ``c``::

    scale_c = gamma_c / sqrt(running_var_c + eps)      shift_c = beta_c - running_mean_c * scale_c
    bn(z)_c = z_c * scale_c + shift_c

so after a layer ``z = W x + b`` (a convolution or a linear map, output channel ``c`` in
the rows of ``W``) the pair is one layer of the same kind::

    W'_c = W_c * scale_c          b'_c = b_c * scale_c + shift_c       (b = 0 without bias)

The fused layer computes the same function up to rounding, with one pass over the
activations fewer. A transposed convolution keeps its output channels in the second
dimension of its weight, per group: ``(in, out / groups, *kernel)``.

:func:`fuse_conv_bn_eval` and :func:`fuse_linear_bn_eval` have ``torch.nn.utils.fusion``'s
signatures and give its weights (the formula above; torch writes the bias as
``(b - mean) * scale + beta``, which differs by rounding only) for any batch norm, torch.nn's or
normlab's, and for :class:`normlab.nn.FrozenBatchNorm2d` (evaluation-mode batch norm in every
mode). :func:`fuse_batch_norms` fuses a whole model.
"""

from __future__ import annotations

import copy
import itertools
from typing import TypeVar

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn.modules import batchnorm as torch_batchnorm
from torch.nn.modules.conv import _ConvNd

from normlab.nn.frozen import FrozenBatchNorm2d

ConvT = TypeVar("ConvT", bound=_ConvNd)
LinearT = TypeVar("LinearT", bound=nn.Linear)


def _scale_and_shift(bn: nn.Module, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The batch norm's evaluation map per channel, ``(scale, shift)``, in ``dtype``."""
    mean, var = bn.running_mean.to(dtype), bn.running_var.to(dtype)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(dtype)
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dtype)
    return scale, shift


def _is_batch_norm(module: nn.Module) -> bool:
    """A batch norm of torch.nn's or normlab's, or a frozen one."""
    return isinstance(module, torch_batchnorm._BatchNorm | FrozenBatchNorm2d)


def _check_pair(layer: nn.Module, bn: nn.Module, out_features: int) -> None:
    """Both in evaluation mode (a frozen batch norm always is), a batch norm with running
    statistics, matching channels."""
    if not _is_batch_norm(bn):
        raise TypeError(
            f"expected a batch norm layer (torch.nn's or normlab's), got {type(bn).__name__}"
        )
    if layer.training or (bn.training and not isinstance(bn, FrozenBatchNorm2d)):
        raise ValueError(
            "fusion is for evaluation only: both layers must be in evaluation mode; "
            "call .eval() on the model first"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"{type(bn).__name__} has no running statistics (track_running_stats=False): it "
            "normalises with batch statistics even in evaluation and cannot be folded"
        )
    if bn.num_features != out_features:
        raise ValueError(
            f"the batch norm has {bn.num_features} features but the layer before it has "
            f"{out_features} outputs; they must be equal"
        )


def _fused_parameters(
    weight: Tensor, bias: Tensor | None, bn: nn.Module, shape: tuple[int, ...]
) -> tuple[nn.Parameter, nn.Parameter]:
    """``(W', b')`` of the module docstring; ``shape`` views ``scale`` against ``W``.

    Computed in the promotion of the layer's and the batch norm's dtypes, then stored in the
    layer's dtypes (as torch does)."""
    dtype = torch.promote_types(weight.dtype, bn.running_var.dtype)
    scale, shift = _scale_and_shift(bn, dtype)
    fused_weight = (weight.to(dtype) * scale.view(shape)).to(weight.dtype)
    fused_bias = shift if bias is None else bias.to(dtype) * scale + shift
    bias_dtype = weight.dtype if bias is None else bias.dtype
    return (
        nn.Parameter(fused_weight.detach(), weight.requires_grad),
        nn.Parameter(fused_bias.to(bias_dtype).detach(), weight.requires_grad),
    )


def fuse_conv_bn_eval(conv: ConvT, bn: nn.Module, transpose: bool | None = None) -> ConvT:
    """A new convolution computing ``bn(conv(x))`` of two layers in evaluation mode.

    ``conv`` and ``bn`` are left unchanged; the result is a copy of ``conv`` (same class)
    with the weight and bias of the module docstring.

    Args:
        conv: a ``Conv1d/2d/3d`` or ``ConvTranspose1d/2d/3d`` (torch.nn's or a subclass).
        bn: the batch norm that follows it (torch.nn's or normlab's), with running stats.
        transpose: whether ``conv`` is transposed; ``None`` (default) reads it from ``conv``.

    Shape:
        weight ``(out, in / groups, *kernel)``, or ``(in, out / groups, *kernel)`` transposed.

    Raises:
        TypeError: ``bn`` is not a batch norm.
        ValueError: either layer in training mode, no running statistics, or the batch
            norm's features differ from the convolution's output channels.

    Example:
        >>> conv, bn = torch.nn.Conv2d(3, 8, 3).eval(), normlab.nn.BatchNorm2d(8).eval()
        >>> fused = fuse_conv_bn_eval(conv, bn)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(fused(x), bn(conv(x)), atol=1e-6)
        True
    """
    _check_pair(conv, bn, conv.out_channels)
    transposed = conv.transposed if transpose is None else transpose
    fused = copy.deepcopy(conv)
    weight = conv.weight
    kernel = (1,) * (weight.dim() - 2)
    if transposed:  # (in, out / g, *k) seen as (g, in / g, out / g, *k)
        groups = conv.groups
        grouped = weight.view(groups, -1, *weight.shape[1:])
        fused_weight, fused_bias = _fused_parameters(
            grouped, conv.bias, bn, (groups, 1, -1, *kernel)
        )
        fused_weight = nn.Parameter(fused_weight.view_as(weight), weight.requires_grad)
    else:
        fused_weight, fused_bias = _fused_parameters(weight, conv.bias, bn, (-1, 1, *kernel))
    fused.weight, fused.bias = fused_weight, fused_bias
    return fused


def fuse_linear_bn_eval(linear: LinearT, bn: nn.Module) -> LinearT:
    """A new linear layer computing ``bn(linear(x))`` of two layers in evaluation mode.

    Args:
        linear: an ``nn.Linear`` (or a subclass), weight ``(out, in)``.
        bn: a ``BatchNorm1d`` over its ``out`` features (torch.nn's or normlab's).

    Raises:
        TypeError: ``bn`` is not a batch norm.
        ValueError: training mode, no running statistics, or ``bn.num_features`` not
            ``linear.out_features``.

    Example:
        >>> linear, bn = torch.nn.Linear(5, 4).eval(), normlab.nn.BatchNorm1d(4).eval()
        >>> fused = fuse_linear_bn_eval(linear, bn)
        >>> x = torch.randn(3, 5)
        >>> torch.allclose(fused(x), bn(linear(x)), atol=1e-6)
        True
    """
    _check_pair(linear, bn, linear.out_features)
    fused = copy.deepcopy(linear)
    fused.weight, fused.bias = _fused_parameters(linear.weight, linear.bias, bn, (-1, 1))
    return fused


# ---------------------------------------------------------------------------------------------
# A whole model
# ---------------------------------------------------------------------------------------------


class _LeafTracer(torch.fx.Tracer):
    """Traces containers only: every module without children is one opaque call."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return not any(True for _ in module.children()) or super().is_leaf_module(
            module, qualified_name
        )


def _fusable(layer: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(layer, _ConvNd | nn.Linear)
        and _is_batch_norm(bn)
        and bn.running_mean is not None
        and bn.num_features
        == (layer.out_channels if isinstance(layer, _ConvNd) else layer.out_features)
    )


def _pairs_from_graph(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer, batch norm)`` names where the norm's input is the layer's output and nothing
    else reads it, each module called once, found by tracing ``model`` (``torch.fx``)."""
    graph = _LeafTracer().trace(model)
    calls = [node for node in graph.nodes if node.op == "call_module"]
    times_called: dict[str, int] = {}
    for node in calls:
        times_called[node.target] = times_called.get(node.target, 0) + 1
    pairs = []
    for node in calls:
        source = node.args[0] if node.args else None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and len(source.users) == 1
            and len(node.args) == 1
            and not node.kwargs
            and times_called[node.target] == times_called[source.target] == 1
            and _fusable(model.get_submodule(source.target), model.get_submodule(node.target))
        ):
            pairs.append((source.target, node.target))
    return pairs


def _pairs_in_sequentials(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer, batch norm)`` names of neighbours in each ``nn.Sequential`` of ``model``."""
    pairs = []
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name, layer), (bn_name, bn) in itertools.pairwise(children):
            if _fusable(layer, bn):
                dot = f"{prefix}." if prefix else ""
                pairs.append((dot + name, dot + bn_name))
    return pairs


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def fuse_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference with every batch norm that follows a convolution or
    linear layer folded into it (replaced by ``nn.Identity``).

    A pair is fused when the batch norm's only input is the layer's output and nothing else
    reads that output (found by tracing the model with ``torch.fx``, every module without
    children a single call; if the model cannot be traced, neighbours in ``nn.Sequential``
    containers). Batch norms after anything else (a pooling, a residual sum), without running
    statistics, or whose features do not match stay as they are. ``model`` is not changed;
    the copy keeps its class and ``forward``, and differs from ``model`` by rounding only.

    Args:
        model: a model in evaluation mode (``model.eval()``).

    Returns:
        The fused copy, in evaluation mode.

    Raises:
        ValueError: ``model`` or one of its modules is in training mode.

    Example:
        >>> model = LeNet().eval()
        >>> fused = fuse_batch_norms(model)
        >>> [m for m in fused.modules() if isinstance(m, BatchNorm2d)]
        []
    """
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"fuse_batch_norms folds evaluation-mode batch norms, but {training[0]} is in "
            "training mode; call model.eval() first"
        )
    fused = copy.deepcopy(model)
    try:
        pairs = _pairs_from_graph(fused)
    except torch.fx.proxy.TraceError:  # control flow on tensor values: no graph
        pairs = _pairs_in_sequentials(fused)
    for layer_name, bn_name in pairs:
        layer, bn = fused.get_submodule(layer_name), fused.get_submodule(bn_name)
        if isinstance(layer, _ConvNd):
            _replace(fused, layer_name, fuse_conv_bn_eval(layer, bn))
        else:
            _replace(fused, layer_name, fuse_linear_bn_eval(layer, bn))
        _replace(fused, bn_name, nn.Identity())
    return fused
