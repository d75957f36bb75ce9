"""Batch norm whose statistics span every process of a group: the maths of SyncBatchNorm.

Each rank holds a slice of the global batch. The forward pass needs the mean and biased
variance of each channel over the *global* batch, the backward pass needs two per-channel
gradient sums over it. Nothing else crosses the wire:

forward
    every rank computes its per-channel moments ``(n_r, mean_r, M2_r)`` with
    ``M2_r = sum (x - mean_r)^2``, packs them into one tensor ``[n_r, mean_r, M2_r]`` of
    ``2C + 1`` values, and one ``all_gather`` gives every rank all of them. They combine
    with Chan et al.'s parallel formula (numerically stable: no ``E[x^2] - E[x]^2``)::

        n = n_a + n_b,  delta = mean_b - mean_a
        mean = mean_a + delta * n_b / n
        M2 = M2_a + M2_b + delta^2 * n_a * n_b / n

    then ``var = M2 / n`` normalises and ``M2 / (n - 1)`` (unbiased) feeds ``running_var``.
    A rank with an empty batch sends ``n_r = 0`` and contributes nothing.

backward
    with ``xhat = (x - mean) * invstd`` and ``dy`` the gradient of the output, every rank
    sums ``[sum dy, sum dy * xhat]`` per channel over its slice, one ``all_reduce`` adds
    them over the group, and::

        dx = weight * invstd * (dy - sum_dy / n - xhat * sum_dy_xhat / n)

    ``dweight = sum dy * xhat`` and ``dbias = sum dy`` stay local: DistributedDataParallel
    averages parameter gradients itself.

Statistics are computed in at least float32 (float64 for float64 inputs); the gathered
moments travel in float64, so counts stay exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from normlab.distributed.groups import all_gather_stacked, all_reduce_sum, group_size, resolve_group
from normlab.functional._common import reduce_dims

Moments = tuple[Tensor, Tensor, Tensor]  # (count, mean, M2), shapes (*,), (*, C), (*, C)


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed in: float64 stays, anything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def local_moments(input: Tensor) -> Moments:
    """Per-channel count, mean and sum of squared deviations of one rank's slice.

    ``mean_c = sum x / n``, ``M2_c = sum (x - mean_c)^2`` (two passes, stable), summed over
    every dimension except the channel dimension 1.

    Args:
        input: the local slice, at least 2-D, float.

    Returns:
        ``(count, mean, m2)``: a 0-D tensor ``n`` and two ``(C,)`` tensors, in
        :func:`stats_dtype`. An empty slice gives ``n = 0`` and zeros.

    Shape:
        input ``(N, C, *)`` -> ``()``, ``(C,)``, ``(C,)``.
    """
    dtype = stats_dtype(input.dtype)
    channels = input.shape[1]
    count = input.numel() // channels if channels else 0
    n = torch.tensor(float(count), dtype=dtype, device=input.device)
    if count == 0:
        zeros = torch.zeros(channels, dtype=dtype, device=input.device)
        return n, zeros, zeros.clone()
    x = input.to(dtype)
    dims = reduce_dims(input)
    mean = x.sum(dims) / count
    centred = x - mean.view(_channel_shape(input))
    return n, mean, (centred * centred).sum(dims)


def chan_combine(a: Moments, b: Moments) -> Moments:
    """Combine the moments of two disjoint parts with Chan et al.'s parallel formula.

    ``n = n_a + n_b``, ``delta = mean_b - mean_a``, ``mean = mean_a + delta * n_b / n``,
    ``M2 = M2_a + M2_b + delta^2 * n_a * n_b / n``. An empty part (``n = 0``) leaves the
    other unchanged; two empty parts give ``n = 0`` and zeros.

    Args:
        a, b: ``(count, mean, m2)`` of each part; counts broadcast against the means.

    Returns:
        ``(count, mean, m2)`` of the union.

    Example:
        >>> x = torch.randn(10, dtype=torch.float64)
        >>> part = lambda t: (torch.tensor(float(len(t))), t.mean(), ((t - t.mean()) ** 2).sum())
        >>> n, mean, m2 = chan_combine(part(x[:3]), part(x[3:]))
        >>> bool(torch.isclose(m2 / n, x.var(correction=0)))
        True
    """
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    safe_n = torch.where(n > 0, n, torch.ones_like(n))
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / safe_n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / safe_n)
    return n, mean, m2


def combine_moments(counts: Tensor, means: Tensor, m2s: Tensor) -> Moments:
    """Combine the per-rank moments of ``P`` parts into the moments of their union.

    Folds :func:`chan_combine` over the parts as a balanced tree (``log2 P`` levels, the
    same rounding behaviour on every rank since every rank folds the same gathered values).

    Args:
        counts: ``(P,)`` element counts per part (zeros allowed).
        means: ``(P, C)`` per-part channel means.
        m2s: ``(P, C)`` per-part sums of squared deviations.

    Returns:
        ``(n, mean, m2)``: a 0-D count and ``(C,)`` mean and M2. The biased variance is
        ``m2 / n``, the unbiased one ``m2 / (n - 1)``.

    Raises:
        ValueError: mismatched shapes or no parts.
    """
    if counts.dim() != 1 or means.shape != m2s.shape or means.shape[:1] != counts.shape:
        raise ValueError(
            "combine_moments expects counts (P,), means (P, C) and m2s (P, C), got "
            f"{tuple(counts.shape)}, {tuple(means.shape)}, {tuple(m2s.shape)}"
        )
    if counts.numel() == 0:
        raise ValueError("combine_moments needs at least one part, got P = 0")
    parts = [(counts[i], means[i], m2s[i]) for i in range(counts.numel())]
    while len(parts) > 1:
        paired = [chan_combine(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        parts = paired + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def _channel_shape(input: Tensor) -> list[int]:
    """``[1, C, 1, ...]``: a per-channel vector broadcast against the input."""
    return [1, input.shape[1]] + [1] * (input.dim() - 2)


def gather_global_moments(input: Tensor, process_group: Any | None) -> Moments:
    """The moments of the global batch: local moments, one ``all_gather``, Chan's combine.

    With ``process_group=None`` nothing is communicated and the local moments are returned,
    so the same code runs (and is tested) in one process.

    Returns:
        ``(n, mean, m2)`` in :func:`stats_dtype` of the input; ``n`` a 0-D tensor.
    """
    n, mean, m2 = local_moments(input)
    if process_group is None:
        return n, mean, m2
    channels = mean.numel()
    packed = torch.cat([n.view(1), mean, m2]).to(torch.float64)
    gathered = all_gather_stacked(packed, process_group, what="SyncBatchNorm statistics")
    g_n, g_mean, g_m2 = combine_moments(
        gathered[:, 0], gathered[:, 1 : 1 + channels], gathered[:, 1 + channels :]
    )
    return g_n.to(mean.dtype), g_mean.to(mean.dtype), g_m2.to(mean.dtype)


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm over a process group, with a closed-form backward.

    ``forward(input, weight, bias, running_mean, running_var, eps, momentum,
    process_group)``: one ``all_gather`` of the packed moments; updates the running
    buffers in place (``running_var`` with the unbiased global variance); saves the input
    and the ``(C,)`` statistics, no normalised copy. ``backward``: one ``all_reduce`` of
    ``[sum dy, sum dy * xhat]``. Every rank must call it, even with an empty slice.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
        momentum: float,
        process_group: Any | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(out, count, mean, invstd)``: the global statistics are outputs without
        gradient, saved for the backward (``count`` a 0-D tensor)."""
        n, mean, m2 = gather_global_moments(input, process_group)
        count = int(n.item())
        if count == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got 1 value per "
                "channel over the whole process group; use a larger batch"
            )
        if count == 0:  # every rank is empty: nothing to normalise, nothing to track
            return input.clone(), n, mean, torch.zeros_like(mean)
        var = m2 / count
        invstd = torch.rsqrt(var + eps)
        with torch.no_grad():
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            if running_var is not None:
                unbiased = (m2 / (count - 1)).to(running_var.dtype)
                running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        if input.numel() == 0:
            return input.clone(), n, mean, invstd
        shape = _channel_shape(input)
        out = (input.to(mean.dtype) - mean.view(shape)) * invstd.view(shape)
        if weight is not None:
            out = out * weight.to(mean.dtype).view(shape)
        if bias is not None:
            out = out + bias.to(mean.dtype).view(shape)
        return out.to(input.dtype), n, mean, invstd

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Tensor:  # type: ignore[override]
        """The normalised output alone (the statistics stay inside the autograd node)."""
        output: Tensor = super().apply(*args, **kwargs)[0]
        return output

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, weight, bias = inputs[:3]
        _, n, mean, invstd = output
        ctx.mark_non_differentiable(n, mean, invstd)
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.process_group = inputs[7]
        ctx.count = int(n.item())
        ctx.bias_dtype = bias.dtype if bias is not None else None

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        input, weight, mean, invstd = ctx.saved_tensors
        none = (None,) * 5  # running_mean, running_var, eps, momentum, process_group
        if ctx.count == 0:
            grad_input = torch.zeros_like(input) if ctx.needs_input_grad[0] else None
            return grad_input, None, None, *none
        dtype = mean.dtype
        dims = reduce_dims(input)
        shape = _channel_shape(input)
        channels = input.shape[1]
        if input.numel() > 0:
            dy = grad_output.to(dtype)
            xhat = (input.to(dtype) - mean.view(shape)) * invstd.view(shape)
            sum_dy = dy.sum(dims)
            sum_dy_xhat = (dy * xhat).sum(dims)
        else:
            dy = xhat = None
            sum_dy = torch.zeros(channels, dtype=dtype, device=input.device)
            sum_dy_xhat = torch.zeros_like(sum_dy)
        grad_weight = (
            sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        )
        grad_bias = sum_dy.to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        grad_input = None
        if ctx.needs_input_grad[0]:
            if ctx.process_group is not None:
                packed = all_reduce_sum(
                    torch.cat([sum_dy, sum_dy_xhat]),
                    ctx.process_group,
                    what="SyncBatchNorm gradients",
                )
                sum_dy, sum_dy_xhat = packed[:channels], packed[channels:]
            if dy is None or xhat is None:
                grad_input = torch.zeros_like(input)
            else:
                scale = invstd if weight is None else invstd * weight.to(dtype)
                n = ctx.count
                grad = dy - (sum_dy / n).view(shape) - xhat * (sum_dy_xhat / n).view(shape)
                grad_input = (grad * scale.view(shape)).to(input.dtype)
        return grad_input, grad_weight, grad_bias, *none


def sync_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    process_group: Any | None = None,
) -> Tensor:
    """Training-mode batch norm with statistics over every rank of ``process_group``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` where ``mean`` and the biased
    ``var`` are per channel over the concatenation of every rank's input (along dim 0);
    ``running_* <- (1 - momentum) * running_* + momentum * batch_stat`` with the unbiased
    global variance. The arguments follow :func:`torch.nn.functional.batch_norm` (always
    training), plus ``process_group``: a ``torch.distributed`` group, default the whole
    world; without an initialised ``torch.distributed`` (or in a group of one) nothing is
    communicated and this is plain training-mode batch norm.

    Every rank of the group must call it, in the same order, with the same ``C``; local
    batch sizes may differ and may be 0.

    Shape:
        input ``(N_r, C, *)`` on rank r, output the same; buffers and affine ``(C,)``.
    """
    if input.dim() < 2:
        raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
    if input.shape[1] == 0:
        raise ValueError("SyncBatchNorm number of input channels should be non-zero")
    process_group = resolve_group(process_group)
    if process_group is not None and group_size(process_group) == 1:
        process_group = None
    return SyncBatchNormFunction.apply(
        input, weight, bias, running_mean, running_var, eps, momentum, process_group
    )
