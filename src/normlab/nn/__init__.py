"""Drop-in replacements for ``torch.nn``'s normalization layers, written from scratch.

Same class names, constructor signatures, parameter and buffer names, ``state_dict``
keys, ``extra_repr`` and errors as ``torch.nn``; the maths lives in
:mod:`normlab.functional`.
"""

from normlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from normlab.nn.dynamic_tanh import DynamicTanh, convert_layer_norms_to_dyt
from normlab.nn.evonorm import EvoNorm2dB0, EvoNorm2dS0
from normlab.nn.filter_response import FilterResponseNorm2d
from normlab.nn.frozen import FrozenBatchNorm2d, freeze_batch_norm
from normlab.nn.fusion import fuse_batch_norms, fuse_conv_bn_eval, fuse_linear_bn_eval
from normlab.nn.ghost import GhostBatchNorm1d, GhostBatchNorm2d
from normlab.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from normlab.nn.lazy import (
    LazyBatchNorm1d,
    LazyBatchNorm2d,
    LazyBatchNorm3d,
    LazyInstanceNorm1d,
    LazyInstanceNorm2d,
    LazyInstanceNorm3d,
)
from normlab.nn.normalization import GroupNorm, LayerNorm, LocalResponseNorm, RMSNorm
from normlab.nn.precise_stats import RecomputedStats, recompute_batch_norm_stats
from normlab.nn.registry import create_norm_layer, norm_names  # last: it reads the above
from normlab.nn.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from normlab.nn.replace import replace_norms
from normlab.nn.std_conv import StdConv2d
from normlab.nn.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "DynamicTanh",
    "EvoNorm2dB0",
    "EvoNorm2dS0",
    "FilterResponseNorm2d",
    "FrozenBatchNorm2d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
    "LocalResponseNorm",
    "RMSNorm",
    "RecomputedStats",
    "StdConv2d",
    "SyncBatchNorm",
    "convert_layer_norms_to_dyt",
    "convert_sync_batchnorm",
    "create_norm_layer",
    "freeze_batch_norm",
    "fuse_batch_norms",
    "fuse_conv_bn_eval",
    "fuse_linear_bn_eval",
    "norm_names",
    "recompute_batch_norm_stats",
    "replace_norms",
]
