"""Instance normalization (Ulyanov et al., 2016): batch norm of each (sample, channel) pair.

Each channel of each sample is normalised over its spatial positions alone::

    y_nc = (x_nc - mean(x_nc)) * rsqrt(var(x_nc) + eps) * weight_c + bias_c

which is batch norm of the input viewed as ``(1, N * C, *)``: every (sample, channel) pair
is its own channel, so the formula, its closed-form backward and its fast paths are
:mod:`normlab.functional.batchnorm`'s. It is also group norm with one channel per group:
without running statistics, where the group-norm operator takes the tensors (eager,
contiguous float32/float64), one call of it does the whole layer, backward included.
The running statistics are updated per pair and averaged over the batch, as
``torch.nn.functional.instance_norm`` does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normlab.functional._common import assign_running
from normlab.functional._fast import groupnorm as groupnorm_fast
from normlab.functional.batchnorm import batch_norm_core, check_input


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Instance normalization: each channel of each sample over its spatial positions.

    .. math::
        y_{n,c} = \frac{x_{n,c} - \mathrm{E}[x_{n,c}]}{\sqrt{\mathrm{Var}[x_{n,c}] + \epsilon}}
        \gamma_c + \beta_c

    Computed as batch norm of the input viewed as ``(1, N * C, *)``. With running statistics
    and ``use_input_stats=True``, each (sample, channel) moves its own copy of the channel's
    running statistics, and the buffers become the average over the batch.

    Args:
        input: ``(N, C, *)`` with at least one spatial dimension.
        running_mean, running_var: ``(C,)`` buffers or ``None``; required when
            ``use_input_stats=False``.
        weight, bias: ``(C,)`` affine parameters or ``None``.
        use_input_stats: normalise with each instance's statistics. Default: ``True``.
        momentum: weight of the new batch in the running statistics. Default: 0.1.
        eps: added to the variance. Default: 1e-5.

    Shape:
        input ``(N, C, *)``, output the same.

    Raises:
        ValueError: a single spatial element with ``use_input_stats``, missing running
            statistics without it, a buffer or parameter of the wrong size.

    Example:
        >>> y = instance_norm(torch.randn(2, 3, 10))
        >>> y.mean(-1).abs().max() < 1e-6
        tensor(True)
    """
    # group norm with one channel per group is this formula: one operator call (not while
    # compiling, where the operator declines: the compiled graph then guards on less)
    untracked = running_mean is None and running_var is None
    if (
        use_input_stats
        and untracked
        and not torch.compiler.is_compiling()
        and input.dim() > 2
        and math.prod(input.shape[2:]) > 1
    ):
        operator = groupnorm_fast.operator_for(input, input.shape[1], weight, bias)
        if operator is not None:
            return operator(input, input.shape[1], weight, bias, eps)
    check_input(input, "instance_norm")
    if use_input_stats:
        if math.prod(input.shape[2:]) == 1:
            raise ValueError(
                f"Expected more than 1 spatial element when training, got input size {input.size()}"
            )
    elif running_mean is None or running_var is None:
        raise ValueError(
            "Expected running_mean and running_var to be defined when use_input_stats is false"
        )
    n, c = input.shape[0], input.shape[1]
    folded = input.reshape(1, n * c, *input.shape[2:])
    running = [None if t is None else t.repeat(n) for t in (running_mean, running_var)]
    out = batch_norm_core(
        folded,
        running[0],
        running[1],
        None if weight is None else weight.repeat(n),
        None if bias is None else bias.repeat(n),
        use_input_stats,
        momentum,
        eps,
    )
    if use_input_stats and n > 0:
        with torch.no_grad():
            for buffer, per_instance in zip((running_mean, running_var), running, strict=True):
                if buffer is not None and per_instance is not None:
                    assign_running(buffer, per_instance.view(n, c).mean(0))
    return out.view(input.shape)
