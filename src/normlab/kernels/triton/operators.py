"""The Triton kernels as CUDA implementations of ``torch.ops.normlab``'s operators.

The CPU library (:mod:`normlab.kernels.cpu`) defines the operators and ties them to
autograd in C++ (``autograd.cpp``): ``batch_norm_train``, ``layer_norm`` and ``group_norm``
call ``*_forward`` through the dispatcher and save what their backward node hands to
``*_backward``. :func:`register` gives those six kernel operators an implementation for
another dispatch key (CUDA) from the Triton launchers, which have the same signatures. A
CUDA call of, say, ``torch.ops.normlab.batch_norm_train`` is then one dispatch from Python
into C++, whose autograd node runs the Triton backward: no Python ``autograd.Function`` in
the forward, and on the backward thread only the launch itself is Python.

Below autograd (``torch.inference_mode``, a caller that dispatches past it) the three
autograd operators are the forward kernels with their outputs only, also registered here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from normlab.kernels.triton.batch_norm import batch_norm_backward, batch_norm_forward
from normlab.kernels.triton.feature_norm import (
    group_norm_backward,
    group_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
)


def count_batch(num_batches_tracked: Tensor | None, momentum: float | None) -> float:
    """This step's momentum, counting the batch in ``num_batches_tracked`` first: torch.nn's
    rule (``momentum=None`` is the cumulative average ``1 / num_batches_tracked``, 0 when
    nothing is counted)."""
    if num_batches_tracked is None:
        return 0.0 if momentum is None else momentum
    num_batches_tracked.add_(1)
    return 1.0 / float(num_batches_tracked) if momentum is None else momentum


def batch_norm_train(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float | None,
    eps: float,
    num_batches_tracked: Tensor | None = None,
) -> Tensor:
    """Training-mode batch norm's output (the statistics updated), without a graph."""
    factor = count_batch(num_batches_tracked, momentum)
    return batch_norm_forward(input, weight, bias, running_mean, running_var, factor, eps)[0]


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Layer norm's output over the trailing ``normalized_shape``, without a graph."""
    return layer_norm_forward(input, weight, bias, math.prod(normalized_shape), eps)[0]


def group_norm(
    input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """Group norm's output, without a graph."""
    return group_norm_forward(input, weight, bias, num_groups, eps)[0]


IMPLEMENTATIONS = {
    "batch_norm_forward": batch_norm_forward,
    "batch_norm_backward": batch_norm_backward,
    "layer_norm_forward": layer_norm_forward,
    "layer_norm_backward": layer_norm_backward,
    "group_norm_forward": group_norm_forward,
    "group_norm_backward": group_norm_backward,
    "batch_norm_train": batch_norm_train,
    "layer_norm": layer_norm,
    "group_norm": group_norm,
}


def register(dispatch_key: str = "CUDA") -> torch.library.Library:
    """Register :data:`IMPLEMENTATIONS` for ``dispatch_key`` on ``torch.ops.normlab`` (the
    CPU library must be loaded: it defines the operators). Returns the library object that
    holds the registrations: they last as long as it does. ``"CPU"`` (tests under Triton's
    interpreter) replaces the C++ loops, with a warning from torch."""
    library = torch.library.Library("normlab", "IMPL")
    for name, implementation in IMPLEMENTATIONS.items():
        library.impl(name, implementation, dispatch_key)
    return library
