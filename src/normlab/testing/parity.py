"""Parity with ``torch.nn``: every normlab layer against its torch twin over a grid.

For each configuration (a layer class, constructor arguments, an input shape) and dtype,
:func:`check` builds ``normlab.nn.X(*args)`` and ``torch.nn.X(*args)``, gives the torch
layer random parameters and buffers and loads its ``state_dict`` into ours, then runs

1. three training steps: forward on a fresh random input, backward with a random upstream
   gradient, compare outputs, input gradients, parameter gradients and buffers, then an
   SGD update of the parameters of both layers (so that any drift accumulates);
2. one step in evaluation mode (running statistics where the layer has them), compared
   the same way;
3. ``state_dict`` both ways: torch -> a fresh normlab layer -> a fresh torch layer gives
   the same keys and bit-identical values.

A difference is ``max|ours - torch| / max(1, max|torch|)``: absolute for values of order
one or less, relative for larger ones (weight gradients sum over the batch and grow with
it). Tolerances (:data:`TOLERANCES`): float64 ``1e-10``; float32 ``1e-5``, i.e. about 80
float32 ulps at 1.0: the two sides sum up to a few hundred values per statistic in
different orders (each order is off by up to ~n/2 ulps in the worst case, ~sqrt(n) typically)
and the error compounds over three training steps; a real bug (biased instead of unbiased
variance, a missing term in a gradient, a wrong momentum) is off by 1e-3 or more.

Layers that ``torch.nn`` lacks are checked against an **oracle** named per configuration
(:data:`ORACLES`): the ``torch.nn`` layer they reduce to where an identity holds (a frozen
batch norm is ``torch.nn.functional.batch_norm`` in evaluation mode; batch renorm with
``rmax=1, dmax=0`` and ghost batch norm with one virtual batch are ``torch.nn``'s batch
norm), else the paper's formula written directly in torch operations
(:mod:`normlab.testing.references`). An oracle has the same ``state_dict`` keys as our layer.

Everything here returns data; :mod:`normlab.cli.check` prints it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from normlab.errors import UsageError
from normlab.functional.renorm import RenormWarmup

#: Every layer class of :mod:`normlab.nn`, checked against the ``torch.nn`` class of that name.
LAYERS: tuple[str, ...] = (
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
    "LocalResponseNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
    "FrozenBatchNorm2d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "StdConv2d",
    "FilterResponseNorm2d",
    "EvoNorm2dB0",
    "EvoNorm2dS0",
    "DynamicTanh",
)

#: Largest allowed difference (see the module docstring for the scale) per dtype.
TOLERANCES: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float64: 1e-10}

_NO_FACTORY_KWARGS = frozenset({"LocalResponseNorm"})  # torch's has no device/dtype arguments
_LEARNING_RATE = 0.1  # SGD step between training steps; moves weights visibly off 1 and 0


@dataclass(frozen=True)
class Config:
    """One layer configuration: ``layer(*args, **kwargs)`` applied to ``input_shape``.

    The input is ``randn(input_shape) * scale + offset``.
    """

    layer: str
    args: tuple[Any, ...]
    input_shape: tuple[int, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()
    scale: float = 1.5  # input standard deviation
    offset: float = 0.5  # input mean
    oracle: str = "torch.nn"  # a key of ORACLES: what the layer is compared with

    @property
    def name(self) -> str:
        """``LayerNorm([4, 5], eps=0.001) on (3, 2, 4, 5)``."""
        arguments = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        shape = ", ".join(str(s) for s in self.input_shape)
        where = (
            f" x{self.scale:g}+{self.offset:g}" if (self.scale, self.offset) != (1.5, 0.5) else ""
        )
        return f"{self.layer}({', '.join(arguments)}) on ({shape}){where}"

    def build(self, library: Any, dtype: torch.dtype, device: torch.device) -> nn.Module:
        """The layer from ``library`` (``normlab.nn`` or ``torch.nn``) with this config."""
        kwargs = dict(self.kwargs)
        if self.layer not in _NO_FACTORY_KWARGS:
            kwargs.update(device=device, dtype=dtype)
        return getattr(library, self.layer)(*self.args, **kwargs)

    def build_reference(self, dtype: torch.dtype, device: torch.device) -> nn.Module:
        """The oracle this configuration is compared with (see :data:`ORACLES`)."""
        return ORACLES[self.oracle].build(self, dtype, device)

    @property
    def oracle_name(self) -> str:
        """What the layer is compared with, e.g. ``torch.nn.BatchNorm2d``."""
        return ORACLES[self.oracle].label.format(layer=self.layer, dims=self.layer[-2:])


@dataclass(frozen=True)
class Oracle:
    """How to build what a configuration is compared with, and what to call it.

    ``label`` may hold ``{layer}`` (the class name) and ``{dims}`` (its ``1d``/``2d``/``3d``
    suffix); ``build(config, dtype, device)`` returns a module with the same ``state_dict``
    keys as the normlab layer.
    """

    label: str
    build: Callable[[Config, torch.dtype, torch.device], nn.Module]


def _torch_twin(config: Config, dtype: torch.dtype, device: torch.device) -> nn.Module:
    return config.build(nn, dtype, device)


#: Constructor options of normlab's batch norm variants that ``torch.nn``'s batch norm lacks.
_VARIANT_OPTIONS = frozenset({"rmax", "dmax", "warmup", "virtual_batch_size"})


def _torch_batch_norm(config: Config, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """``torch.nn.BatchNorm{dims}d`` with the variant's batch norm options: batch renorm with
    ``rmax=1, dmax=0`` and ghost batch norm over one virtual batch are batch norm."""
    kwargs = {k: v for k, v in config.kwargs if k not in _VARIANT_OPTIONS}
    layer = getattr(nn, f"BatchNorm{config.layer[-2:]}")
    return layer(config.args[0], **kwargs, device=device, dtype=dtype)  # (C, V): V dropped


def _formula(config: Config, dtype: torch.dtype, device: torch.device) -> nn.Module:
    from normlab.testing import references

    return config.build(references, dtype, device)


#: Oracles by key (a configuration's ``oracle``).
ORACLES: dict[str, Oracle] = {
    "torch.nn": Oracle("torch.nn.{layer}", _torch_twin),
    "torch batch norm": Oracle("torch.nn.BatchNorm{dims}", _torch_batch_norm),
    "eval batch norm": Oracle("torch.nn.functional.batch_norm, eval", _formula),
    "standardized weight": Oracle("torch.nn.functional.batch_norm of the weight, conv2d", _formula),
    "formula": Oracle("the paper's formula (normlab.testing.references)", _formula),
}


def _c(layer: str, args: tuple[Any, ...], shape: tuple[int, ...], **kwargs: Any) -> Config:
    scale = kwargs.pop("scale", 1.5)
    offset = kwargs.pop("offset", 0.5)
    oracle = kwargs.pop("oracle", "torch.nn")
    return Config(layer, args, shape, tuple(kwargs.items()), scale, offset, oracle)


#: The grid: for every layer, the default, each option off its default, inputs with and
#: without a batch dimension, and inputs far from zero.
GRID: tuple[Config, ...] = (
    # batch norm: momentum, cumulative average (momentum=None), no affine, no running stats
    _c("BatchNorm1d", (4,), (8, 4)),
    _c("BatchNorm1d", (4,), (6, 4, 7)),
    _c("BatchNorm1d", (4,), (8, 4), momentum=None),
    _c("BatchNorm1d", (3,), (5, 3, 4), affine=False),
    _c("BatchNorm1d", (3,), (5, 3, 4), track_running_stats=False),
    _c("BatchNorm1d", (3,), (5, 3, 4), eps=1e-3, momentum=0.3, bias=False),
    _c("BatchNorm2d", (3,), (4, 3, 5, 5)),
    _c("BatchNorm2d", (3,), (2, 3, 4, 4), momentum=None, affine=False),
    _c("BatchNorm2d", (2,), (3, 2, 3, 3), track_running_stats=False),
    _c("BatchNorm2d", (3,), (4, 3, 4, 4), scale=1.0, offset=10.0),
    _c("BatchNorm2d", (3,), (2, 3, 3, 3), eps=1e-3, bias=False),
    _c("BatchNorm3d", (2,), (3, 2, 3, 4, 4)),
    _c("BatchNorm3d", (2,), (2, 2, 2, 3, 3), momentum=None, eps=1e-3),
    _c("BatchNorm3d", (2,), (3, 2, 2, 2, 2), affine=False, track_running_stats=False),
    _c("BatchNorm3d", (2,), (2, 2, 2, 2, 3), bias=False, momentum=0.3),
    # sync batch norm in one process (no process group): batch norm over the local batch
    _c("SyncBatchNorm", (3,), (4, 3, 5, 5)),
    _c("SyncBatchNorm", (4,), (8, 4), momentum=None),
    _c("SyncBatchNorm", (2,), (3, 2, 4), affine=False, track_running_stats=False),
    _c("SyncBatchNorm", (3,), (4, 3, 6), eps=1e-3, bias=False),
    # instance norm: with and without affine / running stats, without a batch dimension
    _c("InstanceNorm1d", (3,), (4, 3, 10)),
    _c("InstanceNorm1d", (3,), (3, 10), affine=True),
    _c("InstanceNorm1d", (3,), (4, 3, 10), track_running_stats=True),
    _c("InstanceNorm1d", (3,), (2, 3, 8), affine=True, track_running_stats=True, momentum=None),
    _c("InstanceNorm1d", (3,), (2, 3, 9), affine=True, bias=False, eps=1e-3),
    _c("InstanceNorm2d", (3,), (2, 3, 6, 6), affine=True),
    _c("InstanceNorm2d", (3,), (2, 3, 5, 5), track_running_stats=True, momentum=0.3),
    _c("InstanceNorm2d", (3,), (3, 5, 5), affine=True, bias=False, eps=1e-3),
    _c("InstanceNorm3d", (2,), (2, 2, 3, 4, 5), affine=True, track_running_stats=True),
    _c("InstanceNorm3d", (2,), (2, 3, 3, 3)),
    _c(
        "InstanceNorm3d",
        (2,),
        (2, 2, 3, 3, 3),
        affine=True,
        bias=False,
        track_running_stats=True,
        momentum=None,
        eps=1e-3,
    ),
    # layer norm: one or several trailing dims, no affine, no bias, no batch dim, offset
    _c("LayerNorm", (6,), (8, 6)),
    _c("LayerNorm", ([4, 5],), (3, 2, 4, 5)),
    _c("LayerNorm", (6,), (8, 6), elementwise_affine=False),
    _c("LayerNorm", (6,), (4, 3, 6), bias=False),
    _c("LayerNorm", (6,), (6,), eps=1e-3),
    _c("LayerNorm", ([3, 4, 4],), (2, 3, 4, 4), scale=1.0, offset=10.0),
    # group norm: G between 1 and C, no spatial dims, 3-d, no affine, no bias
    _c("GroupNorm", (2, 6), (4, 6, 5, 5)),
    _c("GroupNorm", (1, 4), (3, 4, 7)),
    _c("GroupNorm", (4, 4), (2, 4, 3, 3)),
    _c("GroupNorm", (2, 6), (5, 6)),
    _c("GroupNorm", (4, 8), (2, 8, 3, 3, 3), affine=False),
    _c("GroupNorm", (2, 4), (3, 4, 6), bias=False, eps=1e-3),
    _c("GroupNorm", (3, 6), (2, 6, 4, 4), scale=1.0, offset=10.0),
    # RMS norm: eps=None (finfo), explicit eps, no affine, several dims, no batch dim
    _c("RMSNorm", (6,), (8, 6)),
    _c("RMSNorm", ([4, 5],), (3, 2, 4, 5)),
    _c("RMSNorm", (6,), (8, 6), eps=1e-3),
    _c("RMSNorm", (6,), (4, 3, 6), elementwise_affine=False),
    _c("RMSNorm", (6,), (6,)),
    # local response norm: default alpha, strong alpha, 1-d, 3-d, window wider than C
    _c("LocalResponseNorm", (3,), (4, 6, 5, 5)),
    _c("LocalResponseNorm", (3,), (4, 6, 5, 5), alpha=0.5),
    _c("LocalResponseNorm", (2,), (4, 5, 7), alpha=1.0, beta=0.5, k=2.0),
    _c("LocalResponseNorm", (5,), (2, 8, 3, 3, 3), alpha=0.5),
    _c("LocalResponseNorm", (10,), (2, 3, 4, 4), alpha=0.5, beta=1.0),
    # lazy batch and instance norm: the first input fixes C; every option off its default
    _c("LazyBatchNorm1d", (), (8, 4)),
    _c("LazyBatchNorm1d", (), (6, 4, 7), momentum=None, affine=False),
    _c("LazyBatchNorm1d", (), (5, 3, 4), eps=1e-3, track_running_stats=False, bias=False),
    _c("LazyBatchNorm2d", (), (4, 3, 5, 5)),
    _c("LazyBatchNorm2d", (), (2, 3, 4, 4), momentum=None, affine=False, eps=1e-3),
    _c("LazyBatchNorm2d", (), (3, 2, 3, 3), track_running_stats=False, bias=False),
    _c("LazyBatchNorm3d", (), (3, 2, 3, 4, 4)),
    _c("LazyBatchNorm3d", (), (2, 2, 2, 3, 3), momentum=None, eps=1e-3, bias=False),
    _c("LazyBatchNorm3d", (), (3, 2, 2, 2, 2), affine=False, track_running_stats=False),
    _c("LazyInstanceNorm1d", (), (4, 3, 10)),
    _c("LazyInstanceNorm1d", (), (2, 3, 8), affine=True, track_running_stats=True, momentum=None),
    _c("LazyInstanceNorm1d", (), (2, 3, 9), affine=True, bias=False, eps=1e-3),
    _c("LazyInstanceNorm2d", (), (2, 3, 6, 6), affine=True),
    _c("LazyInstanceNorm2d", (), (2, 3, 5, 5), track_running_stats=True, momentum=0.3),
    _c("LazyInstanceNorm2d", (), (2, 3, 5, 5), affine=True, bias=False, eps=1e-3),
    _c("LazyInstanceNorm3d", (), (2, 2, 3, 4, 5), affine=True, track_running_stats=True),
    _c("LazyInstanceNorm3d", (), (2, 2, 3, 3, 3), momentum=None, track_running_stats=True),
    _c("LazyInstanceNorm3d", (), (2, 2, 3, 3, 3), affine=True, bias=False, eps=1e-3),
    # frozen batch norm: evaluation-mode batch norm in both modes; far from zero
    _c("FrozenBatchNorm2d", (3,), (4, 3, 5, 5), oracle="eval batch norm"),
    _c("FrozenBatchNorm2d", (2,), (2, 2, 3, 4), eps=1e-3, oracle="eval batch norm"),
    _c("FrozenBatchNorm2d", (3,), (2, 3, 4, 4), scale=1.0, offset=10.0, oracle="eval batch norm"),
    # batch renorm: rmax=1, dmax=0 is torch.nn's batch norm; else Ioffe's formula, clipping
    # active (tight limits), a warm-up, every batch norm option
    _c("BatchRenorm1d", (4,), (8, 4), rmax=1.0, dmax=0.0, momentum=0.1, oracle="torch batch norm"),
    _c("BatchRenorm1d", (3,), (5, 3, 4), oracle="formula"),
    _c("BatchRenorm1d", (3,), (5, 3, 4), rmax=1.2, dmax=0.1, affine=False, oracle="formula"),
    _c(
        "BatchRenorm2d",
        (3,),
        (4, 3, 5, 5),
        rmax=1.0,
        dmax=0.0,
        momentum=None,
        oracle="torch batch norm",
    ),
    _c("BatchRenorm2d", (3,), (4, 3, 5, 5), oracle="formula"),
    _c("BatchRenorm2d", (3,), (4, 3, 4, 4), rmax=1.1, dmax=0.05, momentum=0.3, oracle="formula"),
    _c("BatchRenorm2d", (3,), (4, 3, 4, 4), scale=1.0, offset=10.0, oracle="formula"),
    _c("BatchRenorm2d", (2,), (3, 2, 3, 3), eps=1e-3, bias=False, momentum=None, oracle="formula"),
    _c(
        "BatchRenorm3d",
        (2,),
        (3, 2, 3, 4, 4),
        rmax=1.0,
        dmax=0.0,
        momentum=0.01,  # torch's batch norm has its own default
        oracle="torch batch norm",
    ),
    _c("BatchRenorm3d", (2,), (3, 2, 2, 3, 3), warmup=RenormWarmup(1, 3, 2), oracle="formula"),
    _c("BatchRenorm3d", (2,), (2, 2, 2, 3, 3), rmax=1.2, dmax=0.2, oracle="formula"),
    _c(
        "BatchRenorm3d",
        (2,),
        (2, 2, 2, 3, 3),
        eps=1e-3,
        momentum=None,
        affine=False,
        oracle="formula",
    ),
    _c("BatchRenorm3d", (2,), (2, 2, 2, 2, 3), bias=False, momentum=0.3, oracle="formula"),
    _c(
        "BatchRenorm1d",
        (3,),
        (6, 3),
        eps=1e-3,
        bias=False,
        warmup=RenormWarmup(1, 2, 2),
        oracle="formula",
    ),
    _c(
        "BatchRenorm2d",
        (2,),
        (3, 2, 3, 3),
        affine=False,
        warmup=RenormWarmup(0, 2, 1),
        oracle="formula",
    ),
    # ghost batch norm: one virtual batch is torch.nn's batch norm; several, with a smaller
    # last one, are the chunks' formula
    _c("GhostBatchNorm1d", (4, 8), (8, 4), oracle="torch batch norm"),
    _c("GhostBatchNorm1d", (4, 3), (8, 4), oracle="formula"),
    _c("GhostBatchNorm1d", (3, 2), (6, 3, 5), momentum=None, affine=False, oracle="formula"),
    _c("GhostBatchNorm2d", (3, 4), (4, 3, 5, 5), momentum=0.3, oracle="torch batch norm"),
    _c("GhostBatchNorm2d", (3, 2), (5, 3, 4, 4), oracle="formula"),
    _c("GhostBatchNorm2d", (3, 2), (4, 3, 4, 4), track_running_stats=False, oracle="formula"),
    _c("GhostBatchNorm2d", (2, 3), (6, 2, 3, 3), eps=1e-3, bias=False, oracle="formula"),
    _c("GhostBatchNorm2d", (3, 2), (4, 3, 4, 4), scale=1.0, offset=10.0, oracle="formula"),
    _c("GhostBatchNorm2d", (3, 3), (7, 3, 2, 2), affine=False, oracle="formula"),
    _c("GhostBatchNorm1d", (3, 4), (10, 3), eps=1e-3, bias=False, oracle="formula"),
    _c("GhostBatchNorm1d", (3, 4), (10, 3, 2), track_running_stats=False, oracle="formula"),
    # weight-standardized convolution: each option of torch.nn.Conv2d, and eps
    _c("StdConv2d", (3, 4, 3), (2, 3, 6, 6), oracle="standardized weight"),
    _c(
        "StdConv2d",
        (4, 6, 3),
        (2, 4, 7, 7),
        stride=2,
        padding=1,
        groups=2,
        oracle="standardized weight",
    ),
    _c(
        "StdConv2d",
        (3, 4, (3, 2)),
        (2, 3, 8, 8),
        dilation=2,
        padding=2,
        padding_mode="reflect",
        bias=False,
        eps=1e-3,
        oracle="standardized weight",
    ),
    # filter response norm with TLU, learned eps, far from zero; 1x1 maps
    _c("FilterResponseNorm2d", (3,), (2, 3, 5, 5), oracle="formula"),
    _c("FilterResponseNorm2d", (4,), (3, 4, 1, 1), learnable_eps=True, oracle="formula"),
    _c(
        "FilterResponseNorm2d",
        (3,),
        (2, 3, 4, 4),
        eps=1e-3,
        scale=1.0,
        offset=10.0,
        oracle="formula",
    ),
    # EvoNorm-B0: batch and running variance; S0: groups from 1 to C
    _c("EvoNorm2dB0", (3,), (4, 3, 5, 5), oracle="formula"),
    _c("EvoNorm2dB0", (4,), (3, 4, 3, 3), momentum=0.3, eps=1e-3, oracle="formula"),
    _c("EvoNorm2dB0", (3,), (4, 3, 4, 4), scale=1.0, offset=10.0, oracle="formula"),
    _c("EvoNorm2dS0", (4,), (2, 4, 5, 5), groups=2, oracle="formula"),
    _c("EvoNorm2dS0", (6,), (3, 6, 3, 3), groups=6, eps=1e-3, oracle="formula"),
    _c("EvoNorm2dS0", (4,), (2, 4, 4, 4), groups=1, scale=1.0, offset=10.0, oracle="formula"),
    # Dynamic Tanh over one or several trailing dimensions
    _c("DynamicTanh", (6,), (8, 6), oracle="formula"),
    _c("DynamicTanh", ([4, 5],), (3, 2, 4, 5), alpha_init_value=1.5, oracle="formula"),
    _c("DynamicTanh", (6,), (4, 3, 6), scale=3.0, oracle="formula"),
)


def configurations(layers: Iterable[str] | None = None) -> list[Config]:
    """The grid's configurations for ``layers`` (class names; all of :data:`LAYERS` if None).

    Raises:
        UsageError: an unknown layer name (the message lists the valid ones).
    """
    wanted = list(LAYERS) if layers is None else list(layers)
    unknown = [name for name in wanted if name not in LAYERS]
    if unknown:
        raise UsageError(
            f"unknown layer {', '.join(map(repr, unknown))}; valid layers: {', '.join(LAYERS)}"
        )
    return [config for config in GRID if config.layer in wanted]


@dataclass(frozen=True)
class Result:
    """The outcome of :func:`check` for one configuration and dtype.

    Differences are ``max|ours - torch| / max(1, max|torch|)`` over all steps; ``error`` is
    set (and the differences are ``inf``) when something could not be compared at all.
    """

    config: Config
    dtype: torch.dtype
    forward_diff: float
    grad_diff: float
    buffer_diff: float
    state_dict_ok: bool
    tolerance: float
    error: str | None = None
    details: tuple[str, ...] = field(default=())  # what exceeded the tolerance, and where
    skipped: str | None = None  # why nothing was compared: the installed torch.nn can't

    @property
    def passed(self) -> bool:
        return self.skipped is not None or (
            self.error is None
            and self.state_dict_ok
            and max(self.forward_diff, self.grad_diff, self.buffer_diff) <= self.tolerance
        )


def difference(ours: Tensor | None, reference: Tensor | None) -> float:
    """``max|ours - reference| / max(1, max|reference|)``; NaN where both are NaN counts as 0.

    ``inf`` when exactly one is ``None`` or the shapes or dtypes differ.
    """
    if ours is None and reference is None:
        return 0.0
    if ours is None or reference is None:
        return math.inf
    if ours.shape != reference.shape or ours.dtype != reference.dtype:
        return math.inf
    if ours.numel() == 0:
        return 0.0
    a, b = ours.detach().double(), reference.detach().double()
    both_nan = torch.isnan(a) & torch.isnan(b)
    error = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
    error = torch.nan_to_num(error, nan=math.inf)
    scale = max(1.0, float(torch.nan_to_num(b.abs(), nan=0.0).max()))
    return float(error.max()) / scale


class _Tracker:
    """The largest difference per kind, and a note for each one over the tolerance."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.worst = {"forward": 0.0, "grad": 0.0, "buffer": 0.0}
        self.details: list[str] = []

    def add(self, kind: str, what: str, ours: Tensor | None, reference: Tensor | None) -> None:
        diff = difference(ours, reference)
        self.worst[kind] = max(self.worst[kind], diff)
        if not diff <= self.tolerance:
            self.details.append(f"{what}: difference {diff:.3g}")


def _materialize(
    module: nn.Module, config: Config, dtype: torch.dtype, device: torch.device
) -> None:
    """A lazy layer takes its shapes from an input of the configuration's shape, so that it
    can be randomised and its ``state_dict`` loaded like any other."""
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        module.initialize_parameters(torch.zeros(config.input_shape, dtype=dtype, device=device))


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Parameters off their initial values, running statistics off 0 and 1."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            base = 1.0 if name.endswith("weight") else 0.0
            parameter.copy_(base + 0.5 * noise)
        for name, buffer in module.named_buffers():
            if name.endswith(("weight", "bias")):  # a frozen layer's affine is buffers
                noise = torch.randn(buffer.shape, generator=generator, dtype=torch.float64)
                buffer.copy_((1.0 if name.endswith("weight") else 0.0) + 0.5 * noise)
            elif name.endswith("running_mean"):
                buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))


def _compare_step(
    tracker: _Tracker,
    label: str,
    ours: nn.Module,
    reference: nn.Module,
    x: Tensor,
    generator: torch.Generator,
) -> None:
    """One forward and backward of both layers on ``x``; record every difference."""
    x_ours = x.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    y_ours = ours(x_ours)
    y_ref = reference(x_ref)
    tracker.add("forward", f"{label} output", y_ours, y_ref)
    upstream = torch.randn(y_ref.shape, generator=generator, dtype=torch.float64)
    upstream = upstream.to(device=y_ref.device, dtype=y_ref.dtype)
    y_ours.backward(upstream)
    y_ref.backward(upstream)
    tracker.add("grad", f"{label} input grad", x_ours.grad, x_ref.grad)
    ours_params = dict(ours.named_parameters())
    for name, parameter in reference.named_parameters():
        tracker.add("grad", f"{label} {name}.grad", ours_params[name].grad, parameter.grad)
    ours_buffers = dict(ours.named_buffers())
    for name, buffer in reference.named_buffers():
        tracker.add("buffer", f"{label} {name}", ours_buffers.get(name), buffer)


def _sgd_step(module: nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.grad is not None:
                parameter -= _LEARNING_RATE * parameter.grad
                parameter.grad = None


def _state_dict_round_trip(
    config: Config, trained: nn.Module, dtype: torch.dtype, device: torch.device
) -> str | None:
    """oracle -> fresh normlab -> fresh oracle: same keys, equal values. None when it holds."""
    import normlab.nn as ours_nn

    source = trained.state_dict()
    middle = config.build(ours_nn, dtype, device)
    middle.load_state_dict(source)
    through = middle.state_dict()
    target = config.build_reference(dtype, device)
    target.load_state_dict(through)
    back = target.state_dict()
    if list(through) != list(source) or list(back) != list(source):
        return f"state_dict keys differ: torch {list(source)}, normlab {list(through)}"
    for key, value in source.items():
        if not (torch.equal(through[key], value) and torch.equal(back[key], value)):
            return f"state_dict value {key!r} changed on the way torch -> normlab -> torch"
    return None


def _torch_lacks(config: Config, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why the installed ``torch.nn`` cannot build ``config`` (an argument of a later torch
    version, such as ``bias=False`` for the norm layers before torch 2.12), or None."""
    try:
        config.build_reference(dtype, device)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            argument = str(error).rsplit("argument ", 1)[-1]
            return f"torch {torch.__version__}'s nn.{config.layer} takes no argument {argument}"
    except Exception:  # anything else shows in the check itself
        return None
    return None


def check(
    config: Config,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    seed: int = 0,
    steps: int = 3,
) -> Result:
    """Compare ``normlab.nn`` with the configuration's oracle (see the module docstring)."""
    import normlab.nn as ours_nn

    device = torch.device(device)
    tolerance = TOLERANCES[dtype]
    lacking = _torch_lacks(config, dtype, device)
    if lacking is not None:
        return Result(config, dtype, 0.0, 0.0, 0.0, True, tolerance, skipped=lacking)
    generator = torch.Generator().manual_seed(seed)
    tracker = _Tracker(tolerance)
    try:
        reference = config.build_reference(dtype, device)
        ours = config.build(ours_nn, dtype, device)
        _materialize(reference, config, dtype, device)
        _materialize(ours, config, dtype, device)
        _randomise(reference, generator)
        ref_keys, our_keys = list(reference.state_dict()), list(ours.state_dict())
        if ref_keys != our_keys:
            raise UsageError(f"state_dict keys differ: oracle {ref_keys}, normlab {our_keys}")
        ours.load_state_dict(reference.state_dict())
        for step, mode in enumerate(["train"] * steps + ["eval"], start=1):
            reference.train(mode == "train")
            ours.train(mode == "train")
            x = torch.randn(config.input_shape, generator=generator, dtype=torch.float64)
            x = (x * config.scale + config.offset).to(device=device, dtype=dtype)
            label = "eval step" if mode == "eval" else f"training step {step}"
            _compare_step(tracker, label, ours, reference, x, generator)
            _sgd_step(reference)
            _sgd_step(ours)
        state_error = _state_dict_round_trip(config, reference, dtype, device)
    except Exception as error:  # a layer that cannot even run is a failed check, not a crash
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        return Result(config, dtype, math.inf, math.inf, math.inf, False, tolerance, message)
    details = tuple(tracker.details) + ((state_error,) if state_error else ())
    return Result(
        config,
        dtype,
        tracker.worst["forward"],
        tracker.worst["grad"],
        tracker.worst["buffer"],
        state_error is None,
        tolerance,
        details=details,
    )


def run_grid(
    layers: Iterable[str] | None = None,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    device: torch.device | str = "cpu",
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> list[Result]:
    """:func:`check` every configuration of ``layers`` in every dtype.

    Args:
        layers: class names (default: all of :data:`LAYERS`).
        dtypes: float32 and/or float64.
        device: where both layers run.
        progress: optional wrapper around the work list (e.g. ``tqdm``).
    """
    for dtype in dtypes:
        if dtype not in TOLERANCES:
            raise UsageError(f"parity is checked in float32 and float64, not {dtype}")
    work = [(c, d) for d in dtypes for c in configurations(layers)]
    items: Iterable[tuple[Config, torch.dtype]] = progress(work) if progress else work
    threads = torch.get_num_threads()
    # The tensors are tiny: with several threads they only wait on each other (about ten
    # times slower on a busy two-core machine), so run on one and restore the setting.
    torch.set_num_threads(1)
    try:
        return [check(config, dtype, device) for config, dtype in items]
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Summary:
    """One row of the ``normlab check`` table: a layer in a dtype over its configurations."""

    layer: str
    dtype: torch.dtype
    configurations: int
    forward_diff: float
    grad_diff: float
    buffer_diff: float
    failed: int
    skipped: int = 0  # configurations the installed torch.nn cannot build
    oracle: str = ""  # what the layer was compared with ("; " between several)


def summarize(results: Sequence[Result]) -> list[Summary]:
    """Group results by (layer, dtype), in the order of :data:`LAYERS`, keeping the maxima."""
    rows: list[Summary] = []
    keys = sorted(
        {(r.config.layer, r.dtype) for r in results},
        key=lambda k: (LAYERS.index(k[0]), str(k[1])),
    )
    for layer, dtype in keys:
        group = [r for r in results if r.config.layer == layer and r.dtype == dtype]
        compared = [r for r in group if r.skipped is None]
        rows.append(
            Summary(
                layer,
                dtype,
                len(group),
                max((r.forward_diff for r in compared), default=0.0),
                max((r.grad_diff for r in compared), default=0.0),
                max((r.buffer_diff for r in compared), default=0.0),
                sum(not r.passed for r in group),
                len(group) - len(compared),
                "; ".join(dict.fromkeys(r.config.oracle_name for r in group)),
            )
        )
    return rows
