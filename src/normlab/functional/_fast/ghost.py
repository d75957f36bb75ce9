"""Ghost batch norm's fast path: batch norm's own fast paths on each chunk.

:mod:`normlab.functional.ghost` holds the formulas; here is how they run eagerly.

:class:`ChunkedBatchNorm`, one ``autograd.Function`` for all chunks
(:mod:`normlab.functional._autograd`): each chunk is a contiguous slice of the batch, which
batch norm's fast paths take as it is: normlab's kernels where they apply
(``batch_norm.cpp`` on the CPU, Triton on CUDA), else batch norm's in-place tensor
arithmetic (:mod:`normlab.functional._fast.batchnorm`). Per chunk one forward call and,
in the backward, one call of the closed form; the outputs and the input's gradients are
concatenated, the affine's summed. Each chunk's mean and unbiased variance are written
into a row of one ``(2, K, C)`` tensor (the kernels' running statistics at momentum 1,
from zero: exactly the chunk's), which stays on the path for the running statistics: the
caller updates them once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from normlab import kernels
from normlab.functional._autograd import FastPath, Grads, Saved, Stats
from normlab.functional._common import as_dtype, compute_dtype
from normlab.functional._fast.batchnorm import grads_in_place, normalize_in_place

_KERNEL_DTYPES = (torch.float32, torch.float64)


@dataclass(slots=True)
class ChunkedBatchNorm(FastPath):
    """Batch norm of each chunk of ``size`` samples through the kernels ``ops`` (``None``:
    the in-place tensor arithmetic); ``moments``: the chunks' means and unbiased variances
    ``(2, K, C)``, set by ``forward``."""

    size: int
    eps: float
    ops: Any
    moments: Tensor | None = None

    def forward(
        self, input: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Stats]:
        chunks = input.split(self.size)
        dtype = compute_dtype(input.dtype)
        self.moments = input.new_zeros(2, len(chunks), input.shape[1], dtype=dtype)
        outputs, centres, invstds = [], [], []
        for chunk, mean, var in zip(chunks, self.moments[0], self.moments[1], strict=True):
            out, centre, invstd = self._chunk_forward(chunk, weight, bias, mean, var)
            outputs.append(out)
            centres.append(centre)
            invstds.append(invstd)
        return torch.cat(outputs), (torch.stack(centres), torch.stack(invstds))

    def _chunk_forward(
        self, chunk: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, var: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(out, centre, invstd)`` of one chunk; its mean and unbiased variance written
        into ``mean`` and ``var``."""
        if self.ops is not None:
            return self.ops.batch_norm_forward(chunk, weight, bias, mean, var, 1.0, self.eps)
        out, chunk_mean, invstd, biased = normalize_in_place(chunk, weight, bias, self.eps)
        n = chunk.numel() // chunk.shape[1]
        mean.copy_(chunk_mean)
        torch.mul(biased, n / (n - 1), out=var)
        return out, chunk_mean, invstd

    def backward(self, grad_out: Tensor, saved: Saved) -> Grads:
        centres, invstds = saved.stats
        dy_chunks = as_dtype(grad_out, saved.input.dtype).split(self.size)
        grads = [
            self._chunk_backward(dy, x, centre, invstd, saved.weight)
            for dy, x, centre, invstd in zip(
                dy_chunks, saved.input.split(self.size), centres, invstds, strict=True
            )
        ]
        dxs, dweights, dbiases = zip(*grads, strict=True)
        needs_dx, needs_dweight, needs_dbias = saved.needs
        return (
            torch.cat(dxs) if needs_dx else None,
            torch.stack(dweights).sum(0) if needs_dweight else None,
            torch.stack(dbiases).sum(0) if needs_dbias else None,
        )

    def _chunk_backward(
        self, dy: Tensor, x: Tensor, centre: Tensor, invstd: Tensor, weight: Tensor | None
    ) -> Grads:
        if self.ops is not None:
            return self.ops.batch_norm_backward(dy, x, centre, invstd, weight)
        return grads_in_place(dy, x, centre, invstd, weight)


def fast_path(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, size: int, eps: float
) -> ChunkedBatchNorm:
    """The chunks through the kernels where they take these tensors (float32/float64),
    else through the in-place tensor arithmetic."""
    ops = kernels.ops_for(input, weight, bias) if input.dtype in _KERNEL_DTYPES else None
    return ChunkedBatchNorm(size, eps, ops)
