"""Normalization over each sample's features: layer, group, RMS and local-response norm.

Each function has the signature, semantics and errors of its ``torch.nn.functional`` twin
and is written from tensor arithmetic and reductions. The statistics are per sample, so
training and evaluation compute the same thing and there are no running buffers.

Layer norm (Ba et al., 2016) normalises the last ``D = prod(normalized_shape)`` values of
every row ``x`` of the input::

    mean = sum(x) / D            var = sum((x - mean)^2) / D              (biased)
    y    = (x - mean) * rsqrt(var + eps) * weight + bias   weight, bias: normalized_shape

Group norm (Wu & He, 2018) does the same per sample over each group of ``C / G`` channels
and all their spatial positions; ``weight`` and ``bias`` are per channel, shape ``(C,)``.

RMS norm (Zhang & Sennrich, 2019) skips the centring: ``y = x * rsqrt(sum(x^2) / D + eps)
* weight``; ``eps=None`` means ``torch.finfo`` eps of the computation dtype (float32 for
float16/bfloat16/float32 inputs, float64 for float64), as torch does.

Local response norm (Krizhevsky et al., 2012) divides each channel by a power of the mean
square over a window of ``size`` neighbouring channels::

    y_c = x_c / (k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x_c'^2) ^ beta

How it is computed, and why:

- Two passes for the variance (the mean first, then the squared deviations as
  ``vector_norm(x - mean)^2``): ``E[x^2] - E[x]^2`` cancels catastrophically for inputs
  far from zero, and ``torch.var_mean`` is some 20x slower than two plain reductions on CPU.
  The centring itself is shifted (:func:`_centre`): each row's first value is subtracted
  before the mean, so an input of mean 1e4 and std 1e-2 in float32 normalises to within
  ~2e-7 of float64, where subtracting the rounded mean (torch.nn) is off by ~0.07.
- Layer, group and RMS norm are ``autograd.Function`` s with a closed-form backward (with
  ``xhat`` the normalised input, ``dyw = dy * weight`` and means over a row or group)::

      dx = rstd * (dyw - mean(dyw) - xhat * mean(dyw * xhat))   (RMS: no mean(dyw) term)
      dweight = sum over rows of dy * xhat                        dbias = sum of dy

  They save ``input``, ``weight`` and two numbers per row (the shift and ``rstd``), as
  torch does: no copy of the activation, not the bias. The forward allocates one
  activation-sized tensor (the output, computed in place) and the backward two, and fused
  multiply-adds (``addcmul``) keep the passes over the data few. When a graph of the
  backward is requested (``create_graph=True``: double backward, ``gradgradcheck``) or
  under ``torch.compile``, the plain differentiable formula is used instead, so higher
  derivatives are exact and the compiler sees ordinary tensor operations it can fuse.
- float16 / bfloat16 inputs: statistics and arithmetic in float32, output in input dtype.
- Errors are raised with torch's messages. Where torch raises ``RuntimeError`` the
  exception is a :class:`ShapeError` (both a ``RuntimeError``, as torch code expects, and a
  :class:`~normlab.errors.UsageError`, which the CLI reports in one line).

None of torch's normalization kernels is called; ``torch.linalg.vector_norm`` (a plain
reduction, no normalization) computes the sums of squares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normlab.errors import UsageError

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class ShapeError(UsageError, RuntimeError):
    """A shape or argument torch rejects with ``RuntimeError``; also a ``ValueError``."""


class DtypeError(TypeError, NotImplementedError):
    """A dtype torch rejects (``NotImplementedError``, a ``RuntimeError``); also a TypeError."""


# ---------------------------------------------------------------------------------------------
# Checks: torch's errors and messages
# ---------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and arithmetic in float32 for half-precision inputs, else the input dtype."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _check_floating(input: Tensor, fn: str) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}(): input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise DtypeError(
            f"{fn} needs a floating-point input, got {input.dtype}; convert it with .float()"
        )


def _check_param_dtypes(input: Tensor, params: Sequence[Tensor | None], fn: str) -> None:
    """torch (CPU) wants parameters in the input dtype, or float32 for half-precision inputs."""
    present = [p for p in params if p is not None]
    allowed = {input.dtype, torch.float32} if input.dtype in _LOW_PRECISION else {input.dtype}
    dtypes = {p.dtype for p in present}
    if len(dtypes) > 1 or not dtypes <= allowed:
        names = ", ".join(str(d) for d in sorted(dtypes, key=str))
        raise DtypeError(
            f"mixed dtype: {fn} got a {input.dtype} input with parameters of dtype {names}; "
            f"cast the parameters to {input.dtype}"
            + (" or float32" if input.dtype in _LOW_PRECISION else "")
        )


def _as_shape(normalized_shape: Any, fn: str) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of ints, rejecting what torch's argument parser rejects."""
    if isinstance(normalized_shape, int):
        raise TypeError(
            f"{fn}(): argument 'normalized_shape' (position 2) must be tuple of ints, not int"
        )
    try:
        shape = tuple(normalized_shape)
    except TypeError:
        raise TypeError(
            f"{fn}(): argument 'normalized_shape' (position 2) must be tuple of ints, "
            f"not {type(normalized_shape).__name__}"
        ) from None
    for position, size in enumerate(shape):
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(
                f"{fn}(): argument 'normalized_shape' (position 2) must be tuple of ints, "
                f"but found element of type {type(size).__name__} at pos {position}"
            )
    return shape


def _check_normalized_shape(
    input: Tensor,
    normalized_shape: Any,
    params: dict[str, Tensor | None],
    fn: str,
) -> tuple[int, ...]:
    shape = _as_shape(normalized_shape, fn)
    if len(shape) == 0:
        raise ShapeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at "
            f"least one element, but got normalized_shape = {list(shape)}"
        )
    for name, param in params.items():
        if param is not None and tuple(param.shape) != shape:
            raise ShapeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of "
                f"shape {list(param.shape)} and normalized_shape = {list(shape)}"
            )
    if input.dim() < len(shape) or tuple(input.shape[input.dim() - len(shape) :]) != shape:
        raise ShapeError(
            f"Given normalized_shape={list(shape)}, expected input with shape "
            f"[*, {', '.join(str(s) for s in shape)}], but got input of size{list(input.shape)}"
        )
    return shape


# ---------------------------------------------------------------------------------------------
# Shared arithmetic
# ---------------------------------------------------------------------------------------------


def _centre(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x - mean(x)`` over the last dim, accurate far from zero, and the shift it used.

    Shifted-data algorithm: subtract each row's first value (exact for values close to each
    other), then the mean of what is left, which is small and so is computed accurately.
    Subtracting the rounded mean directly would be off by half an ulp of the mean (5e-4 for
    a mean of 1e4 in float32, 0.05 standard deviations when the std is 1e-2). Returns the
    centred rows (a new tensor) and ``mean(x - x[..., :1])``.
    """
    centred = x - x[..., :1]
    shift = centred.mean(dim=-1, keepdim=True)
    return centred.sub_(shift), shift


def _normalised(x: Tensor, shift: Tensor, rstd: Tensor) -> Tensor:
    """``xhat = (x - mean) * rstd`` from the saved statistics, in two passes (a new tensor).

    ``(x - x0) * rstd - shift * rstd``: both terms are of the order of the deviations, so
    folding the shift into one fused multiply-add loses nothing.
    """
    deviations = x - x[..., :1]
    return torch.addcmul(-shift * rstd, deviations, rstd, out=deviations)


def _channel_scale(rstd: Tensor, weight: Tensor | None, channels: int) -> Tensor:
    """``(N, C, 1)``: each channel's group ``rstd`` (N, G, 1), times its weight if any."""
    n, groups = rstd.shape[:2]
    per_channel = rstd.expand(n, groups, channels // groups)
    if weight is not None:
        per_channel = per_channel * weight.reshape(groups, -1).to(rstd.dtype)
    return per_channel.reshape(n, channels, 1)


def _rstd_from_centred(centred: Tensor, count: int, eps: float) -> Tensor:
    """``rsqrt(sum(centred^2) / count + eps)`` over the last dim, keepdim; no temporaries."""
    ss = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square_()
    return ss.div_(count).add_(eps).rsqrt_()


def _use_plain_formula(grad_wanted: bool = False) -> bool:
    """Plain autograd formula under ``torch.compile`` (fusable) or when a graph is requested."""
    return grad_wanted or torch.compiler.is_compiling()


def _cast(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    return None if t is None or dtype is None else t.to(dtype)


# ---------------------------------------------------------------------------------------------
# Layer norm
# ---------------------------------------------------------------------------------------------


def _layer_norm_plain(
    input: Tensor,
    shape: tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Layer norm as differentiable tensor operations (double backward, compile, empty input)."""
    batch = input.shape[: input.dim() - len(shape)]
    x = input.to(_compute_dtype(input.dtype)).reshape(*batch, math.prod(shape))
    centred = x - x[..., :1]
    centred = centred - centred.mean(dim=-1, keepdim=True)
    out = centred * torch.rsqrt(centred.square().mean(dim=-1, keepdim=True) + eps)
    out = out.reshape(input.shape)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out.to(input.dtype)


class _LayerNorm(torch.autograd.Function):
    """Layer norm over rows of ``D`` values with the closed-form backward above."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        shape: tuple[int, ...],
        eps: float,
    ) -> Tensor:
        width = math.prod(shape)
        x = input.reshape(-1, width).to(_compute_dtype(input.dtype))
        out, shift = _centre(x)
        rstd = _rstd_from_centred(out, width, eps)
        if weight is None and bias is not None:
            torch.addcmul(bias.reshape(width), out, rstd, out=out)
        else:
            out.mul_(rstd)
            if weight is not None and bias is not None:
                torch.addcmul(bias.reshape(width), out, weight.reshape(width), out=out)
            elif weight is not None:
                out.mul_(weight.reshape(width))
        ctx.save_for_backward(input, weight, shift, rstd)
        ctx.shape, ctx.eps = shape, eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out.view(input.shape).to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, weight, shift, rstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        width = math.prod(ctx.shape)
        cdtype = rstd.dtype
        g = grad_output.reshape(-1, width).to(cdtype)
        db = g.sum(0).view(ctx.shape).to(ctx.bias_dtype) if need_b else None
        if _use_plain_formula(torch.is_grad_enabled()):
            dx, dw = _grads_of_plain(
                lambda x, w: _layer_norm_plain(x, ctx.shape, w, None, ctx.eps),
                (input, weight),
                (need_x, need_w),
                grad_output,
            )
            return dx, dw, db, None, None
        dx = dw = None
        if need_x or need_w:
            xhat = _normalised(input.reshape(-1, width).to(cdtype), shift, rstd)
            gx = g * xhat
            if need_w:
                dw = gx.sum(0).view(ctx.shape).to(weight.dtype)
            if need_x:  # dx = rstd * (g * w - c1 - c2 * xhat), c1, c2 per row
                w = None if weight is None else weight.reshape(width).to(cdtype)
                c1 = g.mean(-1, keepdim=True) if w is None else (g @ w).unsqueeze(-1) / width
                c2 = gx.mean(-1, keepdim=True) if w is None else (gx @ w).unsqueeze(-1) / width
                torch.addcmul(-c1 * rstd, xhat, -c2 * rstd, out=xhat)
                if w is None:
                    dx = torch.addcmul(xhat, g, rstd, out=gx)
                else:
                    dx = torch.addcmul(xhat, torch.mul(g, w, out=gx), rstd, out=gx)
                dx = dx.view(input.shape).to(input.dtype)
        return dx, dw, db, None, None


def layer_norm(
    input: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalization over the last ``len(normalized_shape)`` dimensions.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias``, statistics (biased variance)
    over the last ``len(normalized_shape)`` dimensions of each sample.

    Args:
        input: any shape ``(*, *normalized_shape)``, floating point.
        normalized_shape: the trailing shape to normalise over (a list, tuple or Size).
        weight, bias: optional, of shape ``normalized_shape``.
        eps: added to the variance. Default: 1e-5.

    Shape:
        output has the shape and dtype of ``input``.

    Example:
        >>> y = layer_norm(torch.randn(8, 5, 16), [16])
    """
    _check_floating(input, "layer_norm")
    shape = _check_normalized_shape(
        input, normalized_shape, {"weight": weight, "bias": bias}, "layer_norm"
    )
    _check_param_dtypes(input, (weight, bias), "layer_norm")
    if input.numel() == 0 or _use_plain_formula():
        return _layer_norm_plain(input, shape, weight, bias, eps)
    return _LayerNorm.apply(input, weight, bias, shape, eps)


# ---------------------------------------------------------------------------------------------
# Group norm
# ---------------------------------------------------------------------------------------------


def _group_norm_plain(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Group norm as differentiable tensor operations (double backward, compile, empty input)."""
    n, c = input.shape[:2]
    group_size = c // num_groups * math.prod(input.shape[2:])
    x = input.to(_compute_dtype(input.dtype)).reshape(n, num_groups, group_size)
    centred = x - x[..., :1]
    centred = centred - centred.mean(dim=-1, keepdim=True)
    out = centred * torch.rsqrt(centred.square().mean(dim=-1, keepdim=True) + eps)
    out = out.reshape(input.shape)
    per_channel = (c,) + (1,) * (input.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(per_channel)
    if bias is not None:
        out = out + bias.reshape(per_channel)
    return out.to(input.dtype)


class _GroupNorm(torch.autograd.Function):
    """Group norm of ``(N, C, *)`` with the closed-form backward; statistics per (N, group)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        num_groups: int,
        eps: float,
    ) -> Tensor:
        n, c = input.shape[:2]
        x = input.reshape(n, num_groups, -1).to(_compute_dtype(input.dtype))
        out, shift = _centre(x)
        rstd = _rstd_from_centred(out, x.shape[-1], eps)
        scale = _channel_scale(rstd, weight, c)  # (N, C, 1): rstd of the group * weight
        per_channel = out.view(n, c, -1)
        if bias is None:
            per_channel.mul_(scale)
        else:
            torch.addcmul(bias.reshape(c, 1), per_channel, scale, out=per_channel)
        ctx.save_for_backward(input, weight, shift, rstd)
        ctx.num_groups, ctx.eps = num_groups, eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out.view(input.shape).to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, weight, shift, rstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        groups = ctx.num_groups
        n, c = input.shape[:2]
        cdtype = rstd.dtype
        g = grad_output.reshape(n, c, -1).to(cdtype)
        g_c = g.sum(-1)  # (N, C): sum of dy per sample and channel
        db = g_c.sum(0).to(ctx.bias_dtype) if need_b else None
        if _use_plain_formula(torch.is_grad_enabled()):
            dx, dw = _grads_of_plain(
                lambda x, w: _group_norm_plain(x, groups, w, None, ctx.eps),
                (input, weight),
                (need_x, need_w),
                grad_output,
            )
            return dx, dw, db, None, None
        dx = dw = None
        if need_x or need_w:
            xhat = _normalised(input.reshape(n, groups, -1).to(cdtype), shift, rstd)
            group_size = xhat.shape[-1]
            gx = g * xhat.view(n, c, -1)
            gx_c = gx.sum(-1)  # (N, C): sum of dy * xhat per sample and channel
            if need_w:
                dw = gx_c.sum(0).to(weight.dtype)
            if need_x:  # dx = rstd * (dy * w - c1 - c2 * xhat), c1, c2 per (sample, group)
                if weight is not None:
                    w = weight.to(cdtype)
                    gx_c, g_c = gx_c * w, g_c * w
                c1 = g_c.view(n, groups, -1).sum(-1, keepdim=True) / group_size
                c2 = gx_c.view(n, groups, -1).sum(-1, keepdim=True) / group_size
                torch.addcmul(-c1 * rstd, xhat, -c2 * rstd, out=xhat)
                scale = _channel_scale(rstd, weight, c)
                dx = torch.addcmul(xhat.view(n, c, -1), g, scale, out=gx)
                dx = dx.view(input.shape).to(input.dtype)
        return dx, dw, db, None, None


def _check_group_norm(
    input: Tensor,
    num_groups: Any,
    weight: Tensor | None,
    bias: Tensor | None,
) -> None:
    if not isinstance(num_groups, int) or isinstance(num_groups, bool):
        raise TypeError(
            "group_norm(): argument 'num_groups' (position 2) must be int, "
            f"not {type(num_groups).__name__}"
        )
    if input.dim() < 2:
        raise ShapeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    if num_groups <= 0:
        raise ShapeError(f"Expected num groups to be greater than 0, got {num_groups}")
    n, c = input.shape[:2]
    size = [n * c // num_groups, num_groups, *input.shape[2:]]
    if size[0] * math.prod(size[2:]) == 1:  # one value per group of each sample
        raise UsageError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )
    if c % num_groups != 0:
        raise ShapeError(
            "Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {list(input.shape)} and num_groups={num_groups}"
        )
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and (param.dim() != 1 or param.numel() != c):
            raise ShapeError(
                f"Expected {name} to be a vector of size equal to the number of channels in "
                f"input, but got {name} of shape {list(param.shape)} and input of shape "
                f"{list(input.shape)}"
            )


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalization: statistics per sample over groups of ``C / num_groups`` channels.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight_c + bias_c``, mean and biased variance
    over the channels of a group and all their positions, for each sample.

    Args:
        input: ``(N, C, *)``, floating point.
        num_groups: G, must divide C.
        weight, bias: optional, shape ``(C,)``.
        eps: added to the variance. Default: 1e-5.

    Shape:
        output has the shape and dtype of ``input``.

    Example:
        >>> y = group_norm(torch.randn(8, 6, 10, 10), 3)
    """
    _check_floating(input, "group_norm")
    _check_group_norm(input, num_groups, weight, bias)
    _check_param_dtypes(input, (weight, bias), "group_norm")
    if input.numel() == 0 or _use_plain_formula():
        return _group_norm_plain(input, num_groups, weight, bias, eps)
    return _GroupNorm.apply(input, weight, bias, num_groups, eps)


# ---------------------------------------------------------------------------------------------
# RMS norm
# ---------------------------------------------------------------------------------------------


def _rms_eps(eps: float | None, dtype: torch.dtype) -> float:
    """torch's default: the machine epsilon of the computation dtype."""
    return torch.finfo(_compute_dtype(dtype)).eps if eps is None else eps


def _rms_norm_plain(
    input: Tensor, shape: tuple[int, ...], weight: Tensor | None, eps: float
) -> Tensor:
    """RMS norm as differentiable tensor operations (double backward, compile, empty input)."""
    dims = tuple(range(-len(shape), 0))
    x = input.to(_compute_dtype(input.dtype))
    out = x * torch.rsqrt(x.square().mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out.to(input.dtype)


class _RMSNorm(torch.autograd.Function):
    """RMS norm over rows of ``D`` values with the closed-form backward above."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        shape: tuple[int, ...],
        eps: float,
    ) -> Tensor:
        width = math.prod(shape)
        x = input.reshape(-1, width).to(_compute_dtype(input.dtype))
        rstd = _rstd_from_centred(x, width, eps)
        out = x * rstd
        if weight is not None:
            out.mul_(weight.reshape(width))
        ctx.save_for_backward(input, weight, rstd)
        ctx.shape, ctx.eps = shape, eps
        return out.view(input.shape).to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        input, weight, rstd = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        if _use_plain_formula(torch.is_grad_enabled()):
            dx, dw = _grads_of_plain(
                lambda x, w: _rms_norm_plain(x, ctx.shape, w, ctx.eps),
                (input, weight),
                (need_x, need_w),
                grad_output,
            )
            return dx, dw, None, None
        width = math.prod(ctx.shape)
        cdtype = rstd.dtype
        g = grad_output.reshape(-1, width).to(cdtype)
        xhat = input.reshape(-1, width).to(cdtype) * rstd
        gx = g * xhat
        dx = dw = None
        if need_w:
            dw = gx.sum(0).view(ctx.shape).to(weight.dtype)
        if need_x:  # dx = rstd * (g * w - c2 * xhat), c2 per row
            w = None if weight is None else weight.reshape(width).to(cdtype)
            c2 = gx.mean(-1, keepdim=True) if w is None else (gx @ w).unsqueeze(-1) / width
            xhat.mul_(-c2 * rstd)
            if w is None:
                dx = torch.addcmul(xhat, g, rstd, out=gx)
            else:
                dx = torch.addcmul(xhat, torch.mul(g, w, out=gx), rstd, out=gx)
            dx = dx.view(input.shape).to(input.dtype)
        return dx, dw, None, None


def rms_norm(
    input: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """Root-mean-square normalization over the last ``len(normalized_shape)`` dimensions.

    ``y = x / sqrt(mean(x^2) + eps) * weight``, no centring and no bias.

    Args:
        input: any shape ``(*, *normalized_shape)``, floating point.
        normalized_shape: the trailing shape to normalise over (a list, tuple or Size).
        weight: optional, of shape ``normalized_shape``.
        eps: added to the mean square; ``None`` means ``torch.finfo(t).eps`` for the
            computation dtype ``t`` (float32 for half-precision inputs). Default: None.

    Shape:
        output has the shape and dtype of ``input``.

    Example:
        >>> y = rms_norm(torch.randn(8, 5, 16), [16])
    """
    _check_floating(input, "rms_norm")
    shape = _check_normalized_shape(input, normalized_shape, {"weight": weight}, "rms_norm")
    eps_value = _rms_eps(eps, input.dtype)
    if input.numel() == 0 or _use_plain_formula():
        return _rms_norm_plain(input, shape, weight, eps_value)
    return _RMSNorm.apply(input, weight, shape, eps_value)


# ---------------------------------------------------------------------------------------------
# Local response norm
# ---------------------------------------------------------------------------------------------


def local_response_norm(
    input: Tensor,
    size: int,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
) -> Tensor:
    """Local response normalization across channels.

    ``y_c = x_c / (k + alpha / size * sum of x_c'^2 over a window of size channels)^beta``,
    the window ``c - size//2 .. c + (size-1)//2`` clipped at the edges (zero padding).

    Args:
        input: ``(N, C, *)`` with at least one spatial dimension.
        size: number of neighbouring channels in the window (>= 1).
        alpha: multiplicative factor. Default: 1e-4.
        beta: exponent. Default: 0.75.
        k: additive factor. Default: 1.

    Shape:
        output has the shape of ``input`` (and its dtype for floating inputs).

    Example:
        >>> y = local_response_norm(torch.randn(8, 6, 10, 10), 3)
    """
    if not isinstance(input, Tensor):
        raise TypeError(
            f"local_response_norm(): input must be a torch.Tensor, got {type(input).__name__}"
        )
    if input.dim() < 3:
        raise UsageError(
            f"Expected 3D or higher dimensionality input (got {input.dim()} dimensions)"
        )
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"local_response_norm(): size must be an int, not {type(size).__name__}")
    if size < 1:
        raise ShapeError(
            f"local_response_norm: size must be at least 1 (the channels in the window), got {size}"
        )
    if input.numel() == 0:
        return input
    low_precision = input.dtype in _LOW_PRECISION
    x = input.float() if low_precision else input
    n, c = input.shape[:2]
    # mean of squares over the channel window: (N, 1, C + size - 1, positions) pooled on C
    squares = (x * x).reshape(n, 1, c, -1)
    squares = F.pad(squares, (0, 0, size // 2, (size - 1) // 2))
    window_mean = F.avg_pool2d(squares, (size, 1), stride=1).view(input.shape)
    out = x / (window_mean * alpha + k).pow(beta)
    return out.to(input.dtype) if low_precision else out


# ---------------------------------------------------------------------------------------------
# Higher derivatives: differentiate the plain formula
# ---------------------------------------------------------------------------------------------


def _grads_of_plain(
    plain: Any,
    inputs: tuple[Tensor | None, ...],
    needs: tuple[bool, ...],
    grad_output: Tensor,
) -> list[Tensor | None]:
    """Gradients of ``plain(*inputs)`` with a graph, for the inputs in ``needs``.

    Used in ``backward`` when a graph of the backward is requested: the saved inputs carry
    their autograd history, so the result is differentiable in them and in ``grad_output``.
    """
    with torch.enable_grad():
        detached = [None if t is None else (t if t.requires_grad else t.detach()) for t in inputs]
        output = plain(*detached)
        wanted = [t for t, need in zip(detached, needs, strict=True) if need and t is not None]
        grads = iter(
            torch.autograd.grad(output, wanted, grad_output, create_graph=True, allow_unused=True)
            if wanted
            else ()
        )
    return [
        next(grads) if need and t is not None else None
        for t, need in zip(detached, needs, strict=True)
    ]
