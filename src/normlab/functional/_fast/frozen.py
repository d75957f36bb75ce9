"""Frozen batch norm's fast path: normlab's CPU operator.

:mod:`normlab.functional.frozen` holds the formula; eagerly on the CPU it runs as
``torch.ops.normlab.frozen_batch_norm`` (``frozen_batch_norm.cpp``): one pass forward,
``(x - running_mean) * scale + bias`` with the centring first, as in the formula, and one
pass back, ``dx = dy * scale``, registered for autograd in C++ (one dispatch each way,
where the formula in tensor operations makes three passes and three autograd nodes).

The operator differentiates the input only: it applies where the four per-channel tensors
are buffers (no gradient wanted, as in :class:`normlab.nn.FrozenBatchNorm2d`), and to
float32/float64 CPU tensors of one dtype, contiguous or 4-d channels-last.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normlab import kernels


def cpu_operator(input: Tensor, channel: tuple[Tensor, ...]) -> Any | None:
    """``torch.ops.normlab`` where its ``frozen_batch_norm`` takes ``input`` and the
    ``channel`` tensors ``(weight, bias, running_mean, running_var)``, else None."""
    if not (
        input.is_contiguous()
        or (input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last))
    ):
        return None
    if any(t.requires_grad for t in channel) or not kernels.applies(*channel):
        return None
    if input.dtype != channel[0].dtype or not input.is_cpu:
        return None
    return kernels.ops()
