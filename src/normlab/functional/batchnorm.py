"""Batch normalization (Ioffe & Szegedy, 2015): the formula, its backward, ``batch_norm``.

Each channel ``c`` of an input ``(N, C, *)`` is normalised over the batch and all spatial
positions, ``n = N * prod(*)`` values per channel::

    mean_c = sum(x) / n                    var_c = sum((x - mean_c)^2) / n   (biased)
    xhat   = (x - mean_c) * invstd_c       invstd_c = rsqrt(var_c + eps)
    y      = xhat * weight_c + bias_c

In training the running statistics move towards the batch statistics, with the *unbiased*
variance ``sum((x - mean_c)^2) / (n - 1)`` (what ``torch.nn`` stores)::

    running_mean <- (1 - momentum) * running_mean + momentum * mean_c
    running_var  <- (1 - momentum) * running_var  + momentum * var_c * n / (n - 1)

In evaluation the running statistics fold into one scale and shift per channel::

    a_c = weight_c * rsqrt(running_var_c + eps)      b_c = bias_c - running_mean_c * a_c
    y   = x * a_c + b_c

The training backward in closed form, with ``dy`` the incoming gradient, per channel::

    dbias   = sum(dy)                     dweight = sum(dy * xhat)
    dx      = weight * invstd * (dy - dbias / n - xhat * dweight / n)

:func:`train_forward` and :func:`train_backward` are these formulas as differentiable tensor
operations; :func:`batch_norm` runs them under ``torch.func`` (and differentiates the
backward for higher derivatives), and under ``torch.compile`` the forward with the closed
form backward from its saved statistics (:class:`_TrainingFormula`). Eagerly it runs a
fast path through :mod:`normlab.functional._autograd`: normlab's kernels (C++ on CPU,
Triton on CUDA) or in-place tensor arithmetic (:mod:`normlab.functional._fast.batchnorm`),
the same formulas in few passes. float16 / bfloat16 inputs: statistics and arithmetic in
float32, output in the input's dtype. None of torch's normalization kernels is called.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

import normlab.functional._autograd as _autograd
from normlab.functional._common import (
    as_dtype,
    compute_dtype,
    per_channel,
    reduce_dims,
    update_running_stats,
)
from normlab.functional._fast import batchnorm as fast

# ---------------------------------------------------------------------------------------------
# The formula: training forward, its closed-form backward, evaluation
# ---------------------------------------------------------------------------------------------


def train_forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, var)`` with the batch's statistics (``var`` biased), in one read.

    The statistics are those of the input shifted by a value of each channel (its first),
    ``v = x - x[0, c, 0, ...]``: Welford's ``var_mean`` of ``v`` is stable for any data and
    ``E[v]`` is small, so ``xhat = (v - E[v]) * invstd`` keeps float32 accuracy for inputs
    far from zero (where ``E[x^2] - E[x]^2`` would cancel).
    """
    y, mean, var, _, _ = _shifted_forward(input, weight, bias, eps)
    return y, mean, var


def _first_values(x: Tensor) -> Tensor:
    """Each channel's first value ``x[0, c, 0, ...]``, shaped to broadcast over ``x``."""
    return x[(0, slice(None), *[slice(0, 1)] * (x.dim() - 2))]


def _shifted_forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`train_forward`'s ``(y, mean, var)`` and the ``(C,)`` ``offset = E[v]`` of the
    shifted input ``v = x - first`` and ``invstd``, from which ``xhat = (v - offset) *
    invstd`` is recomputed exactly (the closed-form backward of :class:`_TrainingFormula`).
    ``y = (v - offset) * scale + bias`` with ``weight`` folded into ``scale = invstd *
    weight`` per channel."""
    ndim = input.dim()
    x = as_dtype(input, compute_dtype(input.dtype))
    first = _first_values(x)
    v = x - first
    var, offset = torch.var_mean(v, reduce_dims(input), correction=0)
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else invstd * weight  # one multiplication per value less
    y = (v - per_channel(offset, ndim)) * per_channel(scale, ndim)
    if bias is not None:
        y = y + per_channel(bias, ndim)
    return as_dtype(y, input.dtype), first.reshape(-1) + offset, var, offset, invstd


def train_backward(
    grad_out: Tensor, input: Tensor, weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form ``(dx, dweight, dbias)``, statistics recomputed from ``input``.

    Differentiable: a double backward differentiates it, the statistics' dependence on
    ``x`` included.
    """
    dims, ndim = reduce_dims(input), input.dim()
    n = input.numel() // input.shape[1]
    x = input.to(compute_dtype(input.dtype))
    dy = grad_out.to(x.dtype)
    mean = x.mean(dims)
    centred = x - per_channel(mean, ndim)
    invstd = torch.rsqrt((centred * centred).sum(dims) / n + eps)
    xhat = centred * per_channel(invstd, ndim)
    sum_dy = dy.sum(dims)
    sum_dy_xhat = (dy * xhat).sum(dims)
    scale = invstd if weight is None else invstd * weight
    dx = per_channel(scale, ndim) * (
        dy - per_channel(sum_dy / n, ndim) - xhat * per_channel(sum_dy_xhat / n, ndim)
    )
    return dx.to(input.dtype), sum_dy_xhat, sum_dy


class _TrainingFormula(torch.autograd.Function):
    """:func:`train_forward` with the closed-form backward from its saved statistics:
    ``(input, weight, bias, eps) -> (y, mean, var, offset, invstd)``, the last four without
    gradient. What ``torch.compile`` runs: it then fuses one reduction and one pass for
    the backward, where differentiating the formula (through ``var_mean`` and the shift
    by each channel's first value) takes several. Not differentiable twice (``torch.compile``
    has no double backward); ``torch.func`` transforms differentiate the formula itself.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """:func:`_shifted_forward`, whose statistics the backward reads."""
        return _shifted_forward(input, weight, bias, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, weight, bias, _ = inputs
        _, mean, var, offset, invstd = output
        ctx.mark_non_differentiable(mean, var, offset, invstd)
        ctx.save_for_backward(input, weight, offset, invstd)
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, weight, offset, invstd = ctx.saved_tensors
        dims, ndim = reduce_dims(input), input.dim()
        n = input.numel() // input.shape[1]
        x = as_dtype(input, invstd.dtype)
        dy = as_dtype(grad_out, invstd.dtype)
        centred = x - _first_values(x) - per_channel(offset, ndim)  # x - mean, as forward
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * centred).sum(dims) * invstd
        scale = invstd if weight is None else invstd * weight
        # dx = scale * (dy - sum_dy / n - xhat * sum_dy_xhat / n), per channel coefficients;
        # inductor computes them in the loop over the values: a product there, no division
        minus_inv_n = -1.0 / n
        k2 = scale * invstd * sum_dy_xhat * minus_inv_n
        k3 = scale * sum_dy * minus_inv_n
        dx = dy * per_channel(scale, ndim) + centred * per_channel(k2, ndim) + per_channel(k3, ndim)
        dweight = None if weight is None else as_dtype(sum_dy_xhat, weight.dtype)
        dbias = None if ctx.bias_dtype is None else as_dtype(sum_dy, ctx.bias_dtype)
        return as_dtype(dx, input.dtype), dweight, dbias, None


def eval_forward(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """``y = x * a + b`` with ``a = weight * rsqrt(running_var + eps)``, ``b = bias - mean * a``.

    Eagerly and without autograd, one pass of the kernels; else one ``addcmul`` for
    ``(N, C)`` input (the per-channel vectors run along the contiguous dimension), two
    passes otherwise (``addcmul`` with two broadcast per-channel operands is slower).
    """
    ndim, dtype = input.dim(), compute_dtype(input.dtype)
    scale = torch.rsqrt(as_dtype(running_var, dtype) + eps)
    if weight is not None:
        scale = scale * weight
    mean = as_dtype(running_mean, dtype)
    shift = -mean * scale if bias is None else torch.addcmul(bias, mean, scale, value=-1)
    needs_graph = torch.is_grad_enabled() and any(
        t.requires_grad for t in (input, scale, shift)
    )  # the kernel records no autograd graph
    if not needs_graph and _autograd.eager(input):
        out = fast.channel_affine(input, scale, shift)
        if out is not None:
            return out
    if ndim == 2:
        out = torch.addcmul(shift, input, scale)
    else:
        out = input * per_channel(scale, ndim) + per_channel(shift, ndim)
    return as_dtype(out, input.dtype)


def _train(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
) -> Tensor:
    """Training-mode batch norm: the fast path eagerly, else the formula (with its
    closed-form backward under ``torch.compile``)."""
    if not torch.compiler.is_compiling() and _autograd.eager(input):  # compiling: fewer guards
        path = fast.fast_path(input, weight, bias, running_mean, running_var, momentum, eps)
        return _autograd.run(
            path, lambda dy, x, w: train_backward(dy, x, w, eps), input, weight, bias
        )
    if torch._C._are_functorch_transforms_active():  # torch.func: the formula itself
        out, mean, var = train_forward(input, weight, bias, eps)
    else:  # torch.compile: the formula with its closed-form backward
        out, mean, var, _, _ = _TrainingFormula.apply(input, weight, bias, eps)
    n = input.numel() // input.shape[1]
    update_running_stats(running_mean, running_var, mean, var, n, momentum)
    return out


# ---------------------------------------------------------------------------------------------
# Checks and the core shared with instance norm
# ---------------------------------------------------------------------------------------------


def _empty(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """An input without elements: a fresh empty output still connected to the parameters."""
    out = input.clone()
    if weight is not None and weight.numel() > 0:
        out = out * weight[0]
    if bias is not None and bias.numel() > 0:
        out = out + bias[0]
    return out


def check_input(input: Any, fn: str) -> None:
    """An ``(N, C, *)`` floating-point tensor, or a one-line error saying how to get one."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(
            f"{fn}: expected input of shape (N, C, *) with at least 2 dimensions "
            f"(got {input.dim()}D input); add a batch dimension with input.unsqueeze(0)"
        )
    if not input.is_floating_point():
        raise TypeError(
            f"{fn}: expected a floating-point input, got {input.dtype}; "
            "convert it with input.float()"
        )


def _check_num_features(name: str, tensor: Tensor | None, num_features: int) -> None:
    if tensor is not None and tensor.numel() != num_features:
        raise ValueError(f"{name} should contain {num_features} elements not {tensor.numel()}")


def batch_norm_core(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """Batch norm after the user-facing checks (the core shared with instance norm)."""
    if input.numel() == 0:
        return _empty(input, weight, bias)
    num_features = input.shape[1]
    _check_num_features("running_mean", running_mean, num_features)
    _check_num_features("running_var", running_var, num_features)
    _check_num_features("weight", weight, num_features)
    _check_num_features("bias", bias, num_features)
    if weight is not None and weight.dim() != 1:
        weight = weight.reshape(-1)
    if bias is not None and bias.dim() != 1:
        bias = bias.reshape(-1)
    if not training:
        if running_mean is None:
            raise ValueError("running_mean must be defined in evaluation mode")
        if running_var is None:
            raise ValueError("running_var must be defined in evaluation mode")
        return eval_forward(input, running_mean, running_var, weight, bias, eps)
    return _train(input, weight, bias, running_mean, running_var, momentum, eps)


# ---------------------------------------------------------------------------------------------
# Public API: torch.nn.functional's signature
# ---------------------------------------------------------------------------------------------


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Batch normalization of each channel over the batch and spatial dimensions.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    With ``training=True`` the statistics are the batch's (biased variance) and the running
    statistics, if given, are updated in place (unbiased variance); with ``training=False``
    the running statistics are used: ``y = x * a + b`` per channel.

    Args:
        input: ``(N, C, *)`` floating-point tensor.
        running_mean, running_var: ``(C,)`` buffers or ``None``; required when not training.
        weight, bias: ``(C,)`` affine parameters gamma and beta, or ``None``.
        training: use batch statistics (and update running ones). Default: ``False``.
        momentum: weight of the new batch in the running statistics. Default: 0.1.
        eps: added to the variance; positive in training, non-negative in eval. Default: 1e-5.

    Shape:
        input ``(N, C, *)``, output the same shape and dtype.

    Raises:
        ValueError: one value per channel in training, bad ``eps``, a buffer or parameter with
            the wrong number of elements, running statistics missing in evaluation.

    Example:
        >>> x = torch.randn(8, 3, 5, 5)
        >>> y = batch_norm(x, None, None, training=True)
        >>> y.mean((0, 2, 3)).abs().max() < 1e-6
        tensor(True)
    """
    if training and not torch.compiler.is_compiling():  # the common call: one operator call
        out = fast.train_by_operator(input, weight, bias, running_mean, running_var, momentum, eps)
        if out is not None:
            return out
    check_input(input, "batch_norm")
    if training:
        values_per_channel = input.shape[0] * math.prod(input.shape[2:])
        if values_per_channel == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {input.size()}"
            )
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    return batch_norm_core(input, running_mean, running_var, weight, bias, training, momentum, eps)


def count_batch(momentum: float | None, num_batches_tracked: Tensor | None) -> float:
    """A batch norm module's momentum for this step, after counting the batch in
    ``num_batches_tracked`` (``None``: not counted): ``momentum``, or for ``momentum=None``
    the cumulative average's ``1 / num_batches_tracked`` (0 when not counted)."""
    if num_batches_tracked is None:
        return 0.0 if momentum is None else momentum
    num_batches_tracked.add_(1)
    return 1.0 / float(num_batches_tracked) if momentum is None else momentum


def batch_norm_step(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float | None,
    eps: float,
    num_batches_tracked: Tensor | None,
) -> Tensor:
    """A batch norm module's training step: :func:`count_batch`, then :func:`batch_norm`
    with ``training=True`` and that momentum. Eagerly on the CPU both are one call of the
    operator (the count included)."""
    if not torch.compiler.is_compiling():  # a compiled graph guards on less without it
        out = fast.train_by_operator(
            input, weight, bias, running_mean, running_var, momentum, eps, num_batches_tracked
        )
        if out is not None:
            return out
    factor = count_batch(momentum, num_batches_tracked)
    return batch_norm(input, running_mean, running_var, weight, bias, True, factor, eps)
