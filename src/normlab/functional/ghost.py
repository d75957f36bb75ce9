"""Ghost batch norm (Hoffer, Hubara & Soudry, 2017): batch norm over virtual batches.

Large-batch training loses the regularising noise of small batches' statistics. Ghost batch
norm keeps the large batch for the optimizer and normalises each consecutive chunk of
``virtual_batch_size`` samples with that chunk's own statistics (Keras'
``virtual_batch_size``)::

    chunks    x_k = x[k * V : (k + 1) * V]                     (V = virtual_batch_size)
    y_k       = (x_k - mean(x_k)) / sqrt(var(x_k) + eps) * weight + bias      per channel

The affine is shared by all chunks. A batch that ``V`` does not divide ends with a smaller
chunk (the remainder, as ``torch.split`` cuts it); a chunk of a single value per channel
has no variance, and training on it raises ``ValueError`` as batch norm does.

Running statistics, one update per call, from the chunks' statistics averaged with weights
by chunk size (as Keras updates once per step from the virtual batches' averaged moments)::

    mean_B = sum_k n_k mean(x_k) / N        (the whole batch's mean)
    var_B  = sum_k n_k var_unbiased(x_k) / N
    running <- (1 - momentum) * running + momentum * batch

so that evaluation uses the variance the layer normalised with in training (the average
within-chunk variance, which excludes the spread between chunk means) rather than the whole
batch's. One chunk is batch norm exactly, running statistics included.

The backward in closed form is batch norm's within each chunk, with ``m = n_k * prod(*)``
values per chunk and channel and sums over the chunk; the affine's gradients add up over
the chunks::

    dx_k    = weight * invstd_k * (dy_k - sum_k(dy) / m - xhat_k * sum_k(dy * xhat) / m)
    dweight = sum over all chunks of dy * xhat          dbias = sum of dy

How it is computed: the batch is seen as runs of equal chunks, ``(K, V, C, S)`` views
(``S`` the spatial size; the full chunks, then the remainder as one more chunk), and
:func:`forward` and :func:`backward` reduce all chunks of a run at once over dims 1 and 3.
Eagerly each chunk runs through batch norm's fast paths (normlab's kernels, else its
in-place tensor arithmetic) inside one autograd function
(:mod:`normlab.functional._fast.ghost`, through :mod:`normlab.functional._autograd`;
:func:`backward` is differentiated for higher derivatives); under ``torch.compile``
:func:`forward` runs with the closed-form backward from its saved statistics, under
``torch.func`` :func:`forward` runs and autograd differentiates it. A batch of at most
``V`` samples is :func:`normlab.functional.batchnorm.batch_norm` itself. float16 /
bfloat16 inputs: statistics in float32, output in the input's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.functional._common import as_dtype, assign_running, compute_dtype
from normlab.functional._fast import ghost as fast
from normlab.functional.batchnorm import batch_norm


def check_virtual_batch_size(virtual_batch_size: object) -> None:
    """A positive ``int``, else ``ValueError``."""
    if (
        isinstance(virtual_batch_size, bool)
        or not isinstance(virtual_batch_size, int)
        or virtual_batch_size < 1
    ):
        raise ValueError(
            f"virtual_batch_size must be a positive integer, got {virtual_batch_size!r}"
        )


def _check_chunks(input: Tensor, virtual_batch_size: int) -> None:
    """Every chunk has more than one value per channel (else no variance to train with)."""
    last = input.shape[0] % virtual_batch_size or min(virtual_batch_size, input.shape[0])
    per_sample = input[0, 0].numel() if input.shape[0] else 1
    if last * per_sample == 1:
        raise ValueError(
            "Expected more than 1 value per channel when training: the last virtual batch "
            f"of a batch of {input.shape[0]} with virtual_batch_size={virtual_batch_size} "
            "holds one sample of one value per channel; change the batch size or drop that "
            "batch"
        )


# ---------------------------------------------------------------------------------------------
# The formula: all chunks of a run at once, and its closed-form backward
# ---------------------------------------------------------------------------------------------


def runs(batch: int, size: int) -> list[tuple[int, int]]:
    """``(chunks, samples per chunk)`` of each run of equal chunks of a batch, in order: the
    full chunks of ``size``, then the remainder as one chunk."""
    full, rest = divmod(batch, size)
    return [run for run in ((full, size), (1, rest)) if run[0] and run[1]]


def _chunk_views(t: Tensor, size: int) -> list[Tensor]:
    """``t`` ``(N, C, *)`` as one ``(K, V, C, S)`` tensor per run of equal chunks."""
    views, start = [], 0
    for chunks, samples in runs(t.shape[0], size):
        stop = start + chunks * samples
        views.append(t[start:stop].reshape(chunks, samples, t.shape[1], -1))
        start = stop
    return views


def _channel(v: Tensor | None) -> Tensor | None:
    """A ``(C,)`` vector as ``(1, 1, C, 1)``, to broadcast over ``(K, V, C, S)``."""
    return None if v is None else v.reshape(1, 1, -1, 1)


def _run_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(y, mean, var, offset, invstd)`` of one run ``(K, V, C, S)``: statistics ``(K, C)``
    per chunk and channel (``var`` biased), on the values shifted by each chunk's first value
    of the channel, ``v = x - first`` (Welford's ``var_mean`` of a small offset ``E[v]``:
    stable far from zero); ``xhat = (v - offset) * invstd``."""
    first = x[:, :1, :, :1]
    shifted = x - first
    var, offset = torch.var_mean(shifted, (1, 3), correction=0, keepdim=True)
    invstd = torch.rsqrt(var + eps)
    y = (shifted - offset) * invstd
    if weight is not None:
        y = y * _channel(weight)
    if bias is not None:
        y = y + _channel(bias)
    return y, (first + offset).flatten(1), var.flatten(1), offset.flatten(1), invstd.flatten(1)


def _shifted_forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`forward`'s ``(y, mean, var)``, and the ``(K, C)`` ``offset`` and ``invstd``
    from which the backward recomputes ``xhat`` exactly."""
    per_sample = input[0, 0].numel()
    views = _chunk_views(as_dtype(input, compute_dtype(input.dtype)), size)
    outputs, stats = [], []
    for (_, samples), run in zip(runs(input.shape[0], size), views, strict=True):
        y, mean, var, offset, invstd = _run_forward(run, weight, bias, eps)
        values = samples * per_sample  # per chunk and channel
        outputs.append(y.reshape(-1, *input.shape[1:]))
        stats.append((mean, var * (values / (values - 1)), offset, invstd))
    if len(outputs) == 1:
        return as_dtype(outputs[0], input.dtype), *stats[0]
    joined = (torch.cat(parts) for parts in zip(*stats, strict=True))
    return as_dtype(torch.cat(outputs), input.dtype), *joined


def forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, var)``: the output, and the chunks' means and *unbiased* variances
    ``(K, C)`` (what the running statistics take), in the computation dtype."""
    return _shifted_forward(input, weight, bias, eps, size)[:3]


def _run_grads(
    dy: Tensor, xhat: Tensor, invstd: Tensor, weight: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm's closed form per chunk of one run ``(K, V, C, S)`` (``invstd``
    ``(K, 1, C, 1)``): ``(dx, dweight, dbias)``, the affine's gradients ``(C,)`` summed over
    the run's chunks."""
    dims = (1, 3)
    n = xhat.shape[1] * xhat.shape[3]
    sum_dy = dy.sum(dims, keepdim=True)
    sum_dy_xhat = (dy * xhat).sum(dims, keepdim=True)
    scale = invstd if weight is None else invstd * _channel(weight)
    dx = scale * (dy - sum_dy / n - xhat * (sum_dy_xhat / n))
    return dx, sum_dy_xhat.sum((0, 1, 3)), sum_dy.sum((0, 1, 3))


def _joined_grads(
    input: Tensor, grads: list[tuple[Tensor, Tensor, Tensor]]
) -> tuple[Tensor, Tensor, Tensor]:
    """The runs' gradients as those of the batch: ``dx`` concatenated, the affine's summed."""
    dxs = [dx.reshape(-1, *input.shape[1:]) for dx, _, _ in grads]
    dx = dxs[0] if len(dxs) == 1 else torch.cat(dxs)
    dweight = sum((dw for _, dw, _ in grads[1:]), grads[0][1])
    dbias = sum((db for _, _, db in grads[1:]), grads[0][2])
    return as_dtype(dx, input.dtype), dweight, dbias


def backward(
    grad_out: Tensor, input: Tensor, weight: Tensor | None, eps: float, size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form ``(dx, dweight, dbias)`` of all chunks, statistics recomputed from
    ``input``; differentiable, for higher derivatives."""
    dtype = compute_dtype(input.dtype)
    grads = []
    for dy, x in zip(
        _chunk_views(as_dtype(grad_out, dtype), size),
        _chunk_views(as_dtype(input, dtype), size),
        strict=True,
    ):
        n = x.shape[1] * x.shape[3]
        centred = x - x.mean((1, 3), keepdim=True)
        invstd = torch.rsqrt((centred * centred).sum((1, 3), keepdim=True) / n + eps)
        grads.append(_run_grads(dy, centred * invstd, invstd, weight))
    return _joined_grads(input, grads)


class _Formula(torch.autograd.Function):
    """:func:`forward` with the closed-form backward from its saved statistics:
    ``(input, weight, bias, eps, size) -> (y, mean, var, offset, invstd)``, the last four
    without gradient. What ``torch.compile`` runs: it then fuses one reduction and one pass
    per run for the backward, where differentiating the formula (through ``var_mean`` and
    the shift by each chunk's first values) takes several. Not differentiable twice
    (``torch.compile`` has no double backward); ``torch.func`` transforms differentiate the
    formula itself."""

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, size: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return _shifted_forward(input, weight, bias, eps, size)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, weight, bias, _, size = inputs
        _, mean, var, offset, invstd = output
        ctx.mark_non_differentiable(mean, var, offset, invstd)
        ctx.save_for_backward(input, weight, offset, invstd)
        ctx.size, ctx.bias_dtype = size, None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, weight, offset, invstd = ctx.saved_tensors
        grads, row = [], 0
        for dy, x in zip(
            _chunk_views(as_dtype(grad_out, invstd.dtype), ctx.size),
            _chunk_views(as_dtype(input, invstd.dtype), ctx.size),
            strict=True,
        ):
            rows = slice(row, row + x.shape[0])
            row += x.shape[0]
            run_invstd = invstd[rows].view(x.shape[0], 1, -1, 1)
            run_offset = offset[rows].view(x.shape[0], 1, -1, 1)
            xhat = (x - x[:, :1, :, :1] - run_offset) * run_invstd
            grads.append(_run_grads(dy, xhat, run_invstd, weight))
        dx, dweight, dbias = _joined_grads(input, grads)
        dweight_out = None if weight is None else as_dtype(dweight, weight.dtype)
        dbias_out = None if ctx.bias_dtype is None else as_dtype(dbias, ctx.bias_dtype)
        return dx, dweight_out, dbias_out, None, None


def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    batch: int,
    size: int,
    momentum: float,
) -> None:
    """One move of the running statistics towards the chunks' size-weighted mean and
    unbiased variance (``mean``, ``var``: the chunks', ``(K, C)``, of a batch of ``batch``
    samples in chunks of ``size``)."""
    if running_mean is None and running_var is None:
        return
    mean, var = mean.detach(), var.detach()
    full = batch // size
    batch_mean = mean[:full].sum(0) * (size / batch)
    batch_var = var[:full].sum(0) * (size / batch)
    if full < mean.shape[0]:  # the remainder, a smaller chunk
        rest = (batch - full * size) / batch
        batch_mean = batch_mean + mean[full] * rest
        batch_var = batch_var + var[full] * rest
    if running_mean is not None:
        new_mean = torch.lerp(running_mean, as_dtype(batch_mean, running_mean.dtype), momentum)
        assign_running(running_mean, new_mean)
    if running_var is not None:
        new_var = torch.lerp(running_var, as_dtype(batch_var, running_var.dtype), momentum)
        assign_running(running_var, new_var)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def ghost_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    virtual_batch_size: int = 32,
) -> Tensor:
    r"""Batch norm of each consecutive chunk of ``virtual_batch_size`` samples.

    .. math::
        y_k = \frac{x_k - \mathrm{E}[x_k]}{\sqrt{\mathrm{Var}[x_k] + \epsilon}} \gamma + \beta,
        \qquad x_k = x[kV : (k+1)V]

    With ``training=True`` the chunks' statistics are used (and the running statistics, if
    given, updated once: see the module docstring); with ``training=False`` batch norm with
    the running statistics, over the whole batch.

    Args:
        input: ``(N, C, *)`` floating-point tensor.
        running_mean, running_var: ``(C,)`` buffers or ``None``; required when not training.
        weight, bias: ``(C,)`` affine parameters shared by the chunks, or ``None``.
        training: per-chunk statistics. Default: ``False``.
        momentum: weight of the batch in the running statistics. Default: 0.1.
        eps: added to the variance. Default: 1e-5.
        virtual_batch_size: samples per chunk, a positive integer; the last chunk holds the
            remainder. Default: 32.

    Shape:
        input ``(N, C, *)``, output the same shape and dtype.

    Raises:
        ValueError: ``virtual_batch_size`` not a positive integer; in training, a chunk of
            one value per channel.

    Example:
        >>> x = torch.randn(8, 3, 4, 4)
        >>> y = ghost_batch_norm(x, None, None, training=True, virtual_batch_size=4)
        >>> bool(y[:4].mean((0, 2, 3)).abs().max() < 1e-5)  # each chunk centred on its own
        True
    """
    check_virtual_batch_size(virtual_batch_size)
    if not training or input.numel() == 0 or input.shape[0] <= virtual_batch_size:
        # evaluation, an empty batch (batch norm's empty output) or one chunk: batch norm
        return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    _check_chunks(input, virtual_batch_size)
    size = virtual_batch_size
    if _autograd.eager(input):
        path = fast.fast_path(input, weight, bias, size, eps)
        out = _autograd.run(
            path, lambda dy, x, w: backward(dy, x, w, eps, size), input, weight, bias
        )
        assert path.moments is not None
        mean, var = path.moments
    elif torch._C._are_functorch_transforms_active():  # torch.func: the formula itself
        out, mean, var = forward(input, weight, bias, eps, size)
    else:  # torch.compile: the formula with its closed-form backward
        out, mean, var, _, _ = _Formula.apply(input, weight, bias, eps, size)
    update_running_stats(running_mean, running_var, mean, var, input.shape[0], size, momentum)
    return out
