"""Batch and instance normalization from tensor arithmetic, with a closed-form backward.

Batch norm (Ioffe & Szegedy, 2015) normalises each channel ``c`` of an input ``(N, C, *)``
over the batch and all spatial positions, ``n = N * prod(*)`` values per channel::

    mean_c = sum(x) / n                    var_c = sum((x - mean_c)^2) / n   (biased)
    y      = (x - mean_c) * rsqrt(var_c + eps) * weight_c + bias_c

In training the running statistics move towards the batch statistics, with the *unbiased*
variance ``sum((x - mean_c)^2) / (n - 1)`` (what ``torch.nn`` stores)::

    running_mean <- (1 - momentum) * running_mean + momentum * mean_c
    running_var  <- (1 - momentum) * running_var  + momentum * var_c * n / (n - 1)

In evaluation the running statistics fold into one scale and shift per channel::

    a_c = weight_c * rsqrt(running_var_c + eps)      b_c = bias_c - running_mean_c * a_c
    y   = x * a_c + b_c

The training backward is closed-form (``_BatchNormTrain``): with ``xhat = (x - mean) * invstd``
and ``dy`` the incoming gradient, per channel::

    dbias   = sum(dy)                     dweight = sum(dy * xhat)
    dx      = weight * invstd * (dy - dbias / n - xhat * dweight / n)

How it is computed, and why:

- Corrected two-pass statistics: the mean ``m`` first, then the centred values
  ``v = x - m``, whose sum is ``m``'s rounding error and whose squares give the variance
  ``E[v^2] - E[v]^2`` without cancellation. ``E[x^2] - E[x]^2`` cancels catastrophically for
  inputs far from zero (mean 1e4, std 1e-2 in float32); here the output is even centred on
  the exact mean, more accurately than ``torch.nn``.
- Few passes, few operations, no temporaries (eager, CPU). A fresh activation-sized tensor
  costs more than several in-place passes over one (page faults), so the forward allocates
  only its output and the backward only ``dx``, and both serve as scratch first. Scale and
  shift are two in-place passes (``mul_``, ``add_``): ``addcmul`` with two broadcast
  per-channel operands runs unvectorized, several times slower. Sums of squares are squared
  norms of contiguous ``(n, c)`` rows. Python scalars ride in the operations' own arguments
  (``value=``, ``alpha=``) where they can: a scalar operand costs a tensor allocation.
- Under ``torch.compile`` the formulas are written out of place (``*_traced``), for the
  compiler to fuse each direction into one reduction and one pointwise kernel; the forward
  statistics there are one Welford ``var_mean`` read (stable for any data) of the input
  shifted by its first value per channel.
- float16 / bfloat16 inputs: statistics and arithmetic in float32, output in input dtype.
- Eager on CPU (float32/float64, contiguous), the training forward and backward and the
  evaluation pass run as loops in :mod:`normlab.kernels` (``batch_norm.cpp``: the same
  formulas in three passes forward and two backward, the running statistics updated in
  the same call), 0.5-0.8x torch's time on convolutional features. The backward then
  centres on the rounded first mean ``m`` plus its offset, recomputed from the input,
  which makes float32 gradients far from zero as accurate as float64. Eager on CUDA with
  Triton installed, the same formulas run as Triton kernels
  (:mod:`normlab.kernels.triton.batch_norm`, one or two launches each way, any float
  dtype). This tensor code is the reference and runs everywhere else (``torch.compile``,
  CUDA without Triton, half precision on the CPU).
- The autograd ``Function`` saves only ``input, mean, invstd, weight`` (with the kernels
  ``m``, or on CUDA the mean minus each channel's first value, in place of the mean).
  When a graph of the backward is requested (double backward, ``create_graph=True``), the
  same closed form is evaluated with differentiable out-of-place operations, recomputing
  the statistics from the saved input so that their dependence on ``x`` is differentiated
  too.

Instance norm is batch norm of the input viewed as ``(1, N * C, *)``: every (sample, channel)
pair is its own channel; the running statistics are updated per pair and averaged over the
batch, as ``torch.nn.functional.instance_norm`` does.

None of torch's normalization kernels is called.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from normlab import kernels

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Small helpers: shapes, dtypes, per-channel reductions
# ---------------------------------------------------------------------------------------------


def _reduce_dims(input: Tensor) -> list[int]:
    """The dimensions batch norm reduces over: batch and spatial, ``[0, 2, 3, ...]``."""
    return [0, *range(2, input.dim())]


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """View a ``(C,)`` vector as ``(C, 1, ..., 1)`` so that it broadcasts over ``(N, C, *)``."""
    return v if ndim == 2 else v.view(-1, *[1] * (ndim - 2))


def _as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, without a call when it already is."""
    return t if t.dtype == dtype else t.to(dtype)


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are kept in float32 for half-precision inputs, else in the input dtype."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


# ---------------------------------------------------------------------------------------------
# The training forward and its closed-form backward
# ---------------------------------------------------------------------------------------------


def _sum_and_sum_of_squares(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``sum(v)`` and ``sum(v^2)`` of ``(N, C, *)``, without a temporary copy.

    For a contiguous input with spatial dimensions the sum of squares is the squared 2-norm
    of each ``(n, c)`` row (a fast contiguous reduction), summed over ``n``.
    """
    if values.dim() > 2 and values.is_contiguous():
        rows = values.view(values.shape[0], values.shape[1], -1)
        return rows.sum((0, 2)), torch.linalg.vector_norm(rows, 2, -1).square_().sum(0)
    dims = _reduce_dims(values)
    return values.sum(dims), (values * values).sum(dims)


def _normalize_train(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batch-statistics forward: ``(out, mean, invstd, var)``; stats in ``_stat_dtype``.

    ``var`` is the biased variance. Corrected two-pass statistics: the mean ``m`` first, then
    the sums of the centred values ``v = x - m``: ``mean = m + E[v]`` (``E[v]`` is ``m``'s
    rounding error) and ``var = E[v^2] - E[v]^2``, without cancellation since ``E[v]`` is
    tiny (``E[x^2] - E[x]^2`` cancels catastrophically for inputs far from zero). The output
    is ``y = v * scale + (bias - E[v] * scale)``: small values times the scale.

    Eager: one activation-sized tensor is allocated, the output, which holds ``v`` for the
    sums (``sum(v^2)`` as squared norms of contiguous rows: no temporary) and is then scaled
    and shifted in place. Under ``torch.compile``: :func:`_normalize_train_traced`.
    """
    if torch.compiler.is_compiling():
        return _normalize_train_traced(input, weight, bias, eps)
    dims, ndim = _reduce_dims(input), input.dim()
    n = input.numel() // input.shape[1]
    first_mean = input.mean(dims, dtype=_stat_dtype(input.dtype))
    out = input - _per_channel(first_mean, ndim)
    sum_v, sum_v2 = _sum_and_sum_of_squares(out)
    var = sum_v2.addcmul_(sum_v, sum_v, value=-1 / n).div_(n)  # E[v^2] - E[v]^2
    invstd = var.add(eps).rsqrt_()
    scale = invstd if weight is None else invstd * weight
    if bias is None:
        shift = torch.mul(sum_v, scale).mul_(-1 / n)
    else:
        shift = torch.addcmul(bias, sum_v, scale, value=-1 / n)  # bias - E[v] * scale
    if ndim == 2:  # per-channel vectors along the contiguous dim: one fused pass
        torch.addcmul(shift, out, scale, out=out)
    else:  # broadcast scalars along each row: two vectorized passes beat one addcmul
        out.mul_(_per_channel(scale, ndim)).add_(_per_channel(shift, ndim))
    mean = first_mean.add_(sum_v, alpha=1 / n)
    return _as_dtype(out, input.dtype), mean, invstd, var


def _normalize_train_traced(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_normalize_train`'s result, written for ``torch.compile`` to fuse into one
    reduction and one pointwise kernel.

    One read for the statistics: Welford's ``var_mean`` (stable for any data) of the input
    shifted by its first value per channel, ``v = x - x[0, c, 0, ...]``, so that the mean of
    ``v`` is small and ``y = v * scale + (bias - E[v] * scale)`` is as accurate as eager.
    """
    dims, ndim = _reduce_dims(input), input.dim()
    x = _as_dtype(input, _stat_dtype(input.dtype))
    first = x[(0, slice(None), *[slice(0, 1)] * (ndim - 2))]
    v = x - first
    var, offset = torch.var_mean(v, dims, correction=0)
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else invstd * weight
    shift = -offset * scale if bias is None else bias - offset * scale
    out = v * _per_channel(scale, ndim) + _per_channel(shift, ndim)
    return _as_dtype(out, input.dtype), first.reshape(-1) + offset, invstd, var


def _grads_fast(
    grad_out: Tensor, input: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form ``(dx, dweight, dbias)`` with in-place arithmetic (not differentiable).

    ``dx = scale * dy + k2 * (x - mean) + k3`` with ``scale = weight * invstd``,
    ``k2 = -scale * invstd * dweight / n`` and ``k3 = -scale * dbias / n``. The dot product
    ``dweight = sum(dy * (x - mean)) * invstd`` is taken on the centred input (stable far
    from zero). Eager: one activation-sized tensor is allocated, ``dx``, which first holds
    ``(x - mean) * dy`` for the dot product (reusing it beats a temporary, even when small).
    Under ``torch.compile`` the formulas are written out of place, for the compiler to fuse.
    """
    if torch.compiler.is_compiling():
        return _grads_traced(grad_out, input, mean, invstd, weight)
    dims, ndim = _reduce_dims(input), input.dim()
    n = input.numel() // input.shape[1]
    mean_b = _per_channel(mean, ndim)
    sum_dy = (
        grad_out.sum(dims) if grad_out.dtype == mean.dtype else grad_out.sum(dims, dtype=mean.dtype)
    )
    dx = input - mean_b
    dweight = dx.mul_(grad_out).sum(dims).mul_(invstd)
    torch.sub(input, mean_b, out=dx)
    scale = invstd if weight is None else invstd * weight
    coef = scale.mul(-1 / n)
    k2 = (invstd * dweight).mul_(coef)
    k3 = sum_dy * coef
    if ndim == 2:
        torch.addcmul(k3, dx, k2, out=dx)
    else:
        dx.mul_(_per_channel(k2, ndim)).add_(_per_channel(k3, ndim))
    dx.addcmul_(grad_out, _per_channel(scale, ndim))
    return _as_dtype(dx, input.dtype), dweight, sum_dy


def _grads_traced(
    grad_out: Tensor, input: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_grads_fast`'s formulas out of place: one reduction and one pointwise kernel
    once ``torch.compile`` fuses them."""
    dims, ndim = _reduce_dims(input), input.dim()
    n = input.numel() // input.shape[1]
    x = _as_dtype(input, mean.dtype)
    dy = _as_dtype(grad_out, mean.dtype)
    centred = x - _per_channel(mean, ndim)
    sum_dy = dy.sum(dims)
    dweight = (dy * centred).sum(dims) * invstd
    scale = invstd if weight is None else invstd * weight
    k2 = -scale * invstd * dweight / n
    k3 = -scale * sum_dy / n
    dx = dy * _per_channel(scale, ndim) + centred * _per_channel(k2, ndim) + _per_channel(k3, ndim)
    return _as_dtype(dx, input.dtype), dweight, sum_dy


def _grads_differentiable(
    grad_out: Tensor, input: Tensor, weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The same closed form with out-of-place ops, statistics recomputed from ``input``.

    Used when the backward itself is differentiated (``create_graph=True``): the saved
    ``mean``/``invstd`` are constants, but they depend on ``x``, so they are rebuilt here
    with autograd watching.
    """
    dims, ndim = _reduce_dims(input), input.dim()
    n = input.numel() // input.shape[1]
    x = input.to(_stat_dtype(input.dtype))
    dy = grad_out.to(x.dtype)
    mean = x.mean(dims)
    centred = x - _per_channel(mean, ndim)
    invstd = torch.rsqrt((centred * centred).sum(dims) / n + eps)
    xhat = centred * _per_channel(invstd, ndim)
    sum_dy = dy.sum(dims)
    sum_dy_xhat = (dy * xhat).sum(dims)
    scale = invstd if weight is None else invstd * weight
    dx = _per_channel(scale, ndim) * (
        dy - _per_channel(sum_dy / n, ndim) - xhat * _per_channel(sum_dy_xhat / n, ndim)
    )
    return dx.to(input.dtype), sum_dy_xhat, sum_dy


class _BatchNormTrain(torch.autograd.Function):
    """Batch norm with batch statistics; the backward is the closed form above.

    ``forward(input, weight, bias, running_mean, running_var, momentum, eps) -> out``; the
    running statistics (or ``None``) are updated in place. Eager on CPU, the fused kernels
    of :mod:`normlab.kernels` run the same formulas when they apply.
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
    ) -> Tensor:
        ctx.ops = kernels.ops_for(input, weight, bias, running_mean, running_var)
        if ctx.ops is not None:  # centre: CPU the rounded first mean, CUDA mean - x[0, c]
            out, centre, invstd = ctx.ops.batch_norm_forward(
                input, weight, bias, running_mean, running_var, momentum, eps
            )
        else:
            out, centre, invstd, var = _normalize_train(input, weight, bias, eps)
            n = input.numel() // input.shape[1]
            _update_running_stats(running_mean, running_var, centre, var, n, momentum)
        ctx.save_for_backward(input, centre, invstd, weight)
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        input, centre, invstd, weight = ctx.saved_tensors  # centre: the mean, or the kernels'
        if torch.is_grad_enabled():  # a graph of the backward is wanted: stay differentiable
            dx, dweight, dbias = _grads_differentiable(grad_out, input, weight, ctx.eps)
        elif ctx.ops is not None:
            grad_out = _as_dtype(grad_out, input.dtype)
            dx, dweight, dbias = ctx.ops.batch_norm_backward(
                grad_out, input, centre, invstd, weight
            )
        else:
            dx, dweight, dbias = _grads_fast(grad_out, input, centre, invstd, weight)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        return (
            dx if need_x else None,
            _as_dtype(dweight, weight.dtype) if need_w else None,
            _as_dtype(dbias, ctx.bias_dtype) if need_b else None,
            None,
            None,
            None,
            None,
        )


# ---------------------------------------------------------------------------------------------
# The other paths: evaluation, empty input
# ---------------------------------------------------------------------------------------------


def _normalize_eval(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """``y = x * a + b`` with ``a = weight * rsqrt(running_var + eps)``, ``b = bias - mean * a``.

    One pass for ``(N, C)`` input (``addcmul``: the per-channel vectors run along the
    contiguous dimension); two vectorized passes otherwise (``addcmul`` with two broadcast
    per-channel operands is several times slower on CPU).
    """
    ndim, dtype = input.dim(), _stat_dtype(input.dtype)
    scale = _as_dtype(running_var, dtype).add(eps).rsqrt_()
    if weight is not None:
        scale = scale * weight
    mean = _as_dtype(running_mean, dtype)
    shift = -mean * scale if bias is None else torch.addcmul(bias, mean, scale, value=-1)
    needs_graph = torch.is_grad_enabled() and any(
        t.requires_grad for t in (input, scale, shift)
    )  # the kernel records no autograd graph
    if ndim > 2 and not needs_graph and kernels.applies(input, scale, shift):  # one pass
        return kernels.ops().channel_affine(input, scale, shift)
    if ndim == 2:
        out = torch.addcmul(shift, input, scale)
    else:
        out = torch.mul(input, _per_channel(scale, ndim)).add_(_per_channel(shift, ndim))
    return _as_dtype(out, input.dtype)


def _empty(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """An input without elements: a fresh empty output still connected to the parameters."""
    out = input.clone()
    if weight is not None and weight.numel() > 0:
        out = out * weight[0]
    if bias is not None and bias.numel() > 0:
        out = out + bias[0]
    return out


def _update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    n: int,
    momentum: float,
) -> None:
    """Move the running statistics towards the batch's (unbiased variance), in place.

    ``running.lerp_(batch, momentum)`` is ``running + momentum * (batch - running)``, the
    same average as ``(1 - momentum) * running + momentum * batch`` in one operation.
    ``mean`` and ``var`` are by-products without autograd history, so no graph is recorded.
    """
    if running_mean is not None:
        running_mean.lerp_(_as_dtype(mean, running_mean.dtype), momentum)
    if running_var is not None:
        unbiased = var.mul(n / (n - 1))
        running_var.lerp_(_as_dtype(unbiased, running_var.dtype), momentum)


def _check_input(input: Any, fn: str) -> None:
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


def _batch_norm_impl(
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
        return _normalize_eval(input, running_mean, running_var, weight, bias, eps)
    return _BatchNormTrain.apply(input, weight, bias, running_mean, running_var, momentum, eps)


# ---------------------------------------------------------------------------------------------
# Public API: torch.nn.functional's signatures
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
    _check_input(input, "batch_norm")
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
    return _batch_norm_impl(input, running_mean, running_var, weight, bias, training, momentum, eps)


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
    _check_input(input, "instance_norm")
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
    out = _batch_norm_impl(
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
                    buffer.copy_(per_instance.view(n, c).mean(0))
    return out.view(input.shape)
