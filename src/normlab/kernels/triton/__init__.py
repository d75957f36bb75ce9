"""normlab's CUDA operators, written in Triton: the names and signatures of the CPU
operators in ``torch.ops.normlab`` (:mod:`normlab.kernels`), so that the autograd
functions call either through the namespace :func:`normlab.kernels.ops_for` returns.

- :mod:`~normlab.kernels.triton.batch_norm`: batch norm (and instance norm through it).
- :mod:`~normlab.kernels.triton.feature_norm`: layer norm and group norm.
- :mod:`~normlab.kernels.triton.common`: what they share (types, scalars, grid size).
"""

from normlab.kernels.triton.batch_norm import batch_norm_backward, batch_norm_forward
from normlab.kernels.triton.feature_norm import (
    group_norm_backward,
    group_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
)

__all__ = [
    "batch_norm_backward",
    "batch_norm_forward",
    "group_norm_backward",
    "group_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
]
