"""Batch renormalization (Ioffe, 2017): batch norm corrected towards the running statistics.

Batch norm trains on the batch's statistics and evaluates on the running ones; with small or
non-i.i.d. batches the two disagree. Batch renorm trains on an output that is, up to
clipping, the one evaluation will give. Per channel, with the batch's mean and standard
deviation ``mu_B``, ``sigma_B = sqrt(var_B + eps)`` (biased variance) and the running ones
``mu``, ``sigma = sqrt(running_var + eps)``::

    r    = clip(sigma_B / sigma, 1 / rmax, rmax)         (no gradient)
    d    = clip((mu_B - mu) / sigma, -dmax, dmax)         (no gradient)
    xhat = (x - mu_B) / sigma_B * r + d
    y    = weight * xhat + bias

Without clipping, ``xhat = (x - mu) / sigma``: the evaluation output. ``rmax = 1, dmax = 0``
gives ``r = 1, d = 0``: batch norm exactly. The running statistics move as batch norm's do
(unbiased variance, ``momentum`` the weight of the batch), after ``r`` and ``d`` are taken.

How it is computed: ``r`` and ``d`` are constants of the step, so the output is batch norm
with the per-channel affine ``weight * r`` and ``bias + weight * d``::

    y = (x - mu_B) / sigma_B * (weight * r) + (bias + weight * d)

which :func:`normlab.functional.batch_norm` computes with its closed-form backward
(``dx = (weight r / sigma_B) (dy - mean(dy) - xhat0 mean(dy xhat0))``, ``xhat0`` the plain
batch-normalised input) and its fused CPU and GPU paths; autograd carries the gradient of
``weight`` through the product, ``dweight = sum(dy * (xhat0 * r + d))``. ``r`` and ``d``
come from one extra read of the input (Welford's ``var_mean``, stable far from zero).

float16 / bfloat16 inputs: statistics and arithmetic in float32, output in the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from normlab.functional.batchnorm import batch_norm

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class RenormWarmup:
    """The paper's schedule for the clipping limits (Ioffe 2017, section 4.1): batch norm
    (``rmax = 1``, ``dmax = 0``) for the first ``start`` steps, then relaxed, here linearly,
    to reach ``rmax`` at step ``rmax_at`` and ``dmax`` at step ``dmax_at``.

    The paper's Inception-v3 runs use 5000, 40000 and 25000 (the defaults); a run of fewer
    steps scales them down.
    """

    start: int = 5000
    rmax_at: int = 40000
    dmax_at: int = 25000

    def __post_init__(self) -> None:
        if not 0 <= self.start <= min(self.rmax_at, self.dmax_at):
            raise ValueError(
                f"warm-up steps must satisfy 0 <= start <= rmax_at, dmax_at, got {self}"
            )

    def limits(self, step: int | Tensor, rmax: float, dmax: float) -> tuple[Tensor, Tensor]:
        """``(rmax, dmax)`` in force at training step ``step`` (0 for the first), as
        0-dimensional float64 tensors on ``step``'s device: a layer passes its
        ``num_batches_tracked`` as is, so that ``torch.compile`` traces the schedule in one
        graph instead of reading the count back."""
        step = torch.as_tensor(step, dtype=torch.float64)
        return (
            1.0 + (rmax - 1.0) * self._progress(step, self.rmax_at),
            dmax * self._progress(step, self.dmax_at),
        )

    def _progress(self, step: Tensor, end: int) -> Tensor:
        """0 until ``start``, 1 from ``end``, linear in between."""
        if end <= self.start:
            return (step > self.start).to(step.dtype)
        return ((step - self.start) / (end - self.start)).clamp(0.0, 1.0)


def renorm_corrections(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    rmax: float | Tensor,
    dmax: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """``(r, d)`` per channel for ``input`` of shape ``(N, C, *)``, without gradient.

    ``r = clip(sigma_B / sigma, 1/rmax, rmax)``, ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``,
    in float32 for half-precision inputs.
    """
    dims, ndim = [0, *range(2, input.dim())], input.dim()
    dtype = torch.float32 if input.dtype in _LOW_PRECISION else input.dtype
    with torch.no_grad():
        mu = running_mean.to(dtype)
        # statistics of x - mu: the variance is the same, and mu_B - mu comes out directly,
        # accurate even where mu_B and mu are large and close (they would each be rounded)
        var_b, offset = torch.var_mean(
            input.to(dtype) - mu.view(-1, *[1] * (ndim - 2)), dims, correction=0
        )
        sigma = (running_var.to(dtype) + eps).sqrt()
        if isinstance(rmax, Tensor):  # a warm-up's limits: tensors, in the statistics' dtype
            rmax, dmax = rmax.to(dtype), torch.as_tensor(dmax).to(dtype)
        r = ((var_b + eps).sqrt() / sigma).clamp(1.0 / rmax, rmax)
        d = (offset / sigma).clamp(-dmax, dmax)
        # Compiled, the backward may recompute r and d rather than save them, from graph
        # inputs it takes as unchanged: the running statistics and the step count, which
        # this step updates in place before the backward runs (torch's partitioner). A
        # stack is an operation it saves, never recomputes: r and d read back from it are
        # this step's in the backward too.
        corrections = torch.stack((r, d))
    return corrections[0], corrections[1]


def _corrected_affine(
    weight: Tensor | None, bias: Tensor | None, r: Tensor, d: Tensor
) -> tuple[Tensor, Tensor]:
    """``(weight * r, bias + weight * d)`` with a missing weight 1 and a missing bias 0."""
    if weight is None:
        return r, d if bias is None else bias + d
    scale = weight * r
    shift = weight * d if bias is None else torch.addcmul(bias, weight, d)
    return scale, shift


def batch_renorm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.01,
    eps: float = 1e-5,
    rmax: float | Tensor = 3.0,
    dmax: float | Tensor = 5.0,
) -> Tensor:
    r"""Batch renormalization of each channel of ``(N, C, *)`` (see the module docstring).

    .. math::
        y = \left(\frac{x - \mu_B}{\sigma_B} r + d\right) \gamma + \beta, \quad
        r = \mathrm{clip}_{[1/r_{max}, r_{max}]}\!\left(\frac{\sigma_B}{\sigma}\right), \quad
        d = \mathrm{clip}_{[-d_{max}, d_{max}]}\!\left(\frac{\mu_B - \mu}{\sigma}\right)

    In training the running statistics are updated in place (unbiased variance); in
    evaluation the output is batch norm's with the running statistics.

    Args:
        input: ``(N, C, *)`` floating-point tensor.
        running_mean, running_var: ``(C,)`` buffers (required: ``r`` and ``d`` read them).
        weight, bias: ``(C,)`` affine parameters or ``None``.
        training: batch statistics corrected by ``r``, ``d``. Default: ``False``.
        momentum: weight of the batch in the running statistics. Default: 0.01.
        eps: added to both variances. Default: 1e-5.
        rmax, dmax: clipping limits, ``rmax >= 1``, ``dmax >= 0`` (floats, or 0-dimensional
            tensors from a warm-up schedule). Default: 3, 5.

    Shape:
        input ``(N, C, *)``, output the same shape and dtype.

    Example:
        >>> x = torch.randn(8, 3, 4, 4)
        >>> mean, var = torch.zeros(3), torch.ones(3)
        >>> y = batch_renorm(x, mean, var, training=True, rmax=1.0, dmax=0.0)  # batch norm
        >>> bool(y.mean((0, 2, 3)).abs().max() < 1e-5)
        True
    """
    check_limits(rmax, dmax)
    if not training or input.numel() == 0:  # an empty batch: batch norm's empty output
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    r, d = renorm_corrections(input, running_mean, running_var, eps, rmax, dmax)
    scale, shift = _corrected_affine(weight, bias, r, d)
    return batch_norm(input, running_mean, running_var, scale, shift, True, momentum, eps)


def check_limits(rmax: float | Tensor, dmax: float | Tensor) -> None:
    """``rmax >= 1`` and ``dmax >= 0``, else a ``ValueError`` naming the bad one. Tensors
    (a warm-up schedule's, in range by construction) are not read back."""
    if isinstance(rmax, Tensor) or isinstance(dmax, Tensor):
        return
    if not rmax >= 1.0:
        raise ValueError(f"rmax must be at least 1 (1 is batch norm), got {rmax!r}")
    if not dmax >= 0.0:
        raise ValueError(f"dmax must be non-negative (0 is batch norm), got {dmax!r}")
