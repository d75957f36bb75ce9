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

How it is computed: each chunk by :func:`normlab.functional.batchnorm.batch_norm` (its
closed-form backward, its fused paths) and the results concatenated; the running
statistics read from those batch norms (each chunk's mean and unbiased variance, no
extra pass over the input). float16 / bfloat16 inputs: statistics in float32, output in
the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normlab.functional.batchnorm import batch_norm

_LOW_PRECISION = (torch.float16, torch.bfloat16)


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


def _chunk_norm(
    chunk: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, track: bool
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Batch norm of one chunk; with ``track``, also its mean and unbiased variance, read
    from the batch norm itself (fresh buffers it overwrites: ``momentum=1``), no extra pass."""
    if not track:
        return batch_norm(chunk, None, None, weight, bias, True, 0.0, eps), None
    dtype = torch.float32 if chunk.dtype in _LOW_PRECISION else chunk.dtype
    mean = torch.zeros(chunk.shape[1], dtype=dtype, device=chunk.device)
    var = torch.ones(chunk.shape[1], dtype=dtype, device=chunk.device)
    return batch_norm(chunk, mean, var, weight, bias, True, 1.0, eps), (mean, var)


def _update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    moments: list[tuple[Tensor, Tensor]],
    sizes: list[int],
    momentum: float,
) -> None:
    """One move of the running statistics towards the chunks' size-weighted mean and
    unbiased variance."""
    total = sum(sizes)
    with torch.no_grad():
        mean = sum(m * (size / total) for (m, _), size in zip(moments, sizes, strict=True))
        var = sum(v * (size / total) for (_, v), size in zip(moments, sizes, strict=True))
        if running_mean is not None:
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
        if running_var is not None:
            running_var.lerp_(var.to(running_var.dtype), momentum)


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
    if not training or input.numel() == 0:  # an empty batch: batch norm's empty output
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    _check_chunks(input, virtual_batch_size)
    chunks = input.split(virtual_batch_size)
    track = running_mean is not None or running_var is not None
    results = [_chunk_norm(chunk, weight, bias, eps, track) for chunk in chunks]
    if track:
        moments = [m for _, m in results if m is not None]
        _update_running_stats(
            running_mean, running_var, moments, [c.shape[0] for c in chunks], momentum
        )
    outputs = [out for out, _ in results]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
