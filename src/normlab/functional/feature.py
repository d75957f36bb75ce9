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
  far from zero, and ``torch.var_mean`` (a scalar Welford loop on CPU) is 14-150x slower
  than a sum over the same values (64 rows of 120 to 3456 values, 1 or 2 threads). The
  centring itself is shifted (:func:`_standardize`): each row's first value is subtracted
  before the mean, so an input of mean 1e4 and std 1e-2 in float32 normalises to within
  ~2e-7 of float64, where subtracting the rounded mean (torch.nn) is off by ~0.07.
- Layer and group norm are ``autograd.Function`` s that save ``xhat`` (the standardised
  input, in the input's dtype), ``rstd`` and ``weight``: as many bytes as torch saves
  (``input``, ``mean``, ``rstd``, ``weight``). From ``xhat`` the closed-form backward is a
  few fused passes with no recomputation (``g = dy``, means over a row or group)::

      dx = rstd * (g * w - mean(g * w) - xhat * mean(g * w * xhat))
      dweight = sum over rows of g * xhat                           dbias = sum of g

  The row means are matrix-vector products (layer norm) or sums per (sample, channel)
  (group norm); ``dx`` is assembled by multiply-adds in the memory of ``g * xhat``. The
  forward allocates ``xhat`` and the output, the backward one tensor; without autograd
  (``torch.no_grad``, or no input requiring grad) the output is computed in ``xhat``'s
  memory. ``xhat`` and ``rstd`` are outputs of the ``Function`` (the public functions drop
  them), so a double backward (``create_graph=True``, ``gradgradcheck``) differentiates the
  same closed form, written with out-of-place operations, back through them to the input.
- Speed: each pass here is one ATen call, inside a Python ``autograd.Function``; torch's
  layer norm is one fused kernel each way. Eager on CPU (float32/float64, contiguous), layer
  and group norm therefore run :mod:`normlab.kernels`' loops instead, through
  :mod:`normlab.functional.fused` (the same formulas; 1.3-1.4x torch's time over the bench
  grid, at parity on large inputs). This tensor code is what runs everywhere else (CUDA,
  half precision, ``torch.compile``) and what the formulas above describe.
- RMS norm saves ``input`` and differentiates the plain formula for a double backward
  (torch's RMS norm on CPU is itself a composite of ops, and ours is faster).
- Under ``torch.compile`` every function is the plain differentiable formula, so the
  compiler sees ordinary tensor operations it can fuse.
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

from normlab import kernels
from normlab.errors import UsageError
from normlab.functional import fused

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
    if all(p is None or p.dtype == input.dtype for p in params):
        return
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
    if type(normalized_shape) in (tuple, torch.Size) and all(
        type(size) is int for size in normalized_shape
    ):
        return normalized_shape  # the common case (a module's shape), checked cheaply
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
        if param is not None and param.shape != shape:
            raise ShapeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of "
                f"shape {list(param.shape)} and normalized_shape = {list(shape)}"
            )
    if input.dim() < len(shape) or input.shape[input.dim() - len(shape) :] != shape:
        raise ShapeError(
            f"Given normalized_shape={list(shape)}, expected input with shape "
            f"[*, {', '.join(str(s) for s in shape)}], but got input of size{list(input.shape)}"
        )
    return tuple(shape)


# ---------------------------------------------------------------------------------------------
# Shared arithmetic: standardised rows and their gradient
# ---------------------------------------------------------------------------------------------


def _standardize(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``xhat = (x - mean) * rstd`` over the last dim of rows ``(R, S)``, and ``rstd (R, 1)``.

    ``rstd = rsqrt(sum((x - mean)^2) / S + eps)``: two passes, shifted. Each row's first value
    is subtracted (exact for values close to each other), then the mean of what is left, which
    is small and so accurate; subtracting the rounded mean directly would be off by half an
    ulp of the mean (5e-4 for a mean of 1e4 in float32, 0.05 standard deviations when the std
    is 1e-2). ``xhat`` is a new tensor computed in place: one activation-sized allocation.
    """
    xhat = x - x.narrow(-1, 0, 1)
    xhat.sub_(xhat.mean(dim=-1, keepdim=True))
    rstd = _rstd_from_centred(xhat, x.shape[-1], eps)
    return xhat.mul_(rstd), rstd


def _rstd_from_centred(centred: Tensor, count: int, eps: float) -> Tensor:
    """``rsqrt(sum(centred^2) / count + eps)`` over the last dim, keepdim; no temporaries."""
    ss = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square_()
    return ss.mul_(1.0 / count).add_(eps).rsqrt_()


def _standardize_grad(
    g: Tensor | None,
    xhat: Tensor,
    rstd: Tensor,
    grad_xhat: Tensor | None,
    grad_rstd: Tensor | None,
) -> Tensor:
    """Gradient through ``xhat = (x - mean) * rstd`` with differentiable out-of-place ops.

    With ``G`` the gradient reaching ``xhat`` (``dy * weight``, plus ``grad_xhat`` when a
    higher derivative flows back into the saved ``xhat``), per row of ``S`` values::

        dx = rstd * (G - mean(G) - xhat * (mean(G * xhat) + grad_rstd * rstd / S))

    since ``d rstd / dx = -rstd^2 * xhat / S``. For double backward: ``xhat`` and ``rstd`` are
    outputs of the autograd ``Function``, so a graph of this expression leads back to it.
    """
    if grad_xhat is not None:
        g = grad_xhat if g is None else g + grad_xhat
    if g is None:
        g = torch.zeros_like(xhat)
    inner = (g * xhat).mean(dim=-1, keepdim=True)
    if grad_rstd is not None:
        inner = inner + grad_rstd * rstd / xhat.shape[-1]
    return rstd * (g - g.mean(dim=-1, keepdim=True) - xhat * inner)


def _in_place_backward(grad_xhat: Tensor | None, grad_rstd: Tensor | None) -> bool:
    """The in-place closed form, unless a graph of the backward or a higher derivative is
    wanted (``create_graph=True``, or gradients flowing into the saved ``xhat``/``rstd``)."""
    return grad_xhat is None and grad_rstd is None and not torch.is_grad_enabled()


def _use_plain_formula(grad_wanted: bool = False) -> bool:
    """Plain autograd formula under ``torch.compile`` (fusable) or when a graph is requested."""
    return grad_wanted or torch.compiler.is_compiling()


def _records_graph(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> bool:
    """Whether autograd records this call: grad mode on and some tensor requires grad."""
    return torch.is_grad_enabled() and (
        input.requires_grad
        or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad)
    )


def _as(t: Tensor, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """``t`` viewed as ``shape`` in ``dtype``, calling torch only for what differs."""
    if t.shape != shape:
        t = t.reshape(shape)
    return t if t.dtype == dtype else t.to(dtype)


class _Saved:
    """Shapes and dtypes of ``input``, ``weight`` and ``bias``, for the gradients."""

    __slots__ = ("bias", "input", "weight")

    def __init__(self, input: Tensor, weight: Tensor | None, bias: Tensor | None) -> None:
        self.input = (input.shape, input.dtype)
        self.weight = None if weight is None else (weight.shape, weight.dtype)
        self.bias = None if bias is None else (bias.shape, bias.dtype)

    def grads(
        self, dx: Tensor | None, dw: Tensor | None, db: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        return (
            None if dx is None else _as(dx, *self.input),
            None if dw is None or self.weight is None else _as(dw, *self.weight),
            None if db is None or self.bias is None else _as(db, *self.bias),
            None,
            None,
        )


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
    """Layer norm as differentiable tensor operations (``torch.compile``, empty input)."""
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


def _layer_norm_forward(
    input: Tensor, width: int, weight: Tensor | None, bias: Tensor | None, eps: float, keep: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, xhat, rstd)`` over rows of ``width`` values: ``y = xhat * weight + bias``.

    ``keep=False`` (nothing saved for a backward) computes ``y`` in ``xhat``'s memory: one
    activation-sized allocation instead of two.
    """
    rows = input.numel() // width
    xhat, rstd = _standardize(_as(input, (rows, width), _compute_dtype(input.dtype)), eps)
    out = None if keep else xhat
    w = None if weight is None else _as(weight, (width,), weight.dtype)
    b = None if bias is None else _as(bias, (width,), bias.dtype)
    if w is not None and b is not None:
        y = torch.addcmul(b, xhat, w, out=out)
    elif w is not None:
        y = torch.mul(xhat, w, out=out)
    elif b is not None:
        y = torch.add(xhat, b, out=out)
    else:
        y = xhat if out is not None else xhat.clone()
    return _as(y, input.shape, input.dtype), xhat, rstd


def _layer_norm_grads(
    g: Tensor, xhat: Tensor, rstd: Tensor, w: Tensor | None, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """``(dx, dweight)`` for rows ``(R, D)``, in place: one activation-sized allocation.

    With the row means ``a = mean(g * w)`` and ``b = mean(g * w * xhat)`` (matrix-vector
    products ``-g @ w / D``, ``-(g * xhat) @ w / D``, negated for the multiply-adds)::

        dx = rstd * (g * w - a - b * xhat)                dweight = sum over rows of g * xhat
    """
    gx = g * xhat
    dw = gx.sum(0) if need_w else None
    if not need_x:
        return None, dw
    if w is None:
        dx = torch.mul(xhat, gx.mean(-1, keepdim=True), out=gx)  # gx is summed: reuse it
        return torch.sub(g, dx, out=dx).sub_(g.mean(-1, keepdim=True)).mul_(rstd), dw
    column, scale = w.view(-1, 1), -1.0 / w.shape[0]
    minus_a = torch.addmm(rstd, g, column, beta=0, alpha=scale)  # beta=0: rstd is ignored
    minus_b = torch.addmm(rstd, gx, column, beta=0, alpha=scale)
    dx = torch.mul(xhat, minus_b, out=gx)  # gx is summed: its memory becomes dx
    return dx.add_(minus_a).addcmul_(g, w).mul_(rstd), dw


class _LayerNorm(torch.autograd.Function):
    """Layer norm over rows of ``D`` values; closed-form backward from the saved ``xhat``.

    ``forward -> (y, xhat, rstd)``: :func:`layer_norm` keeps ``y`` only. ``xhat`` and
    ``rstd`` are outputs so that they are saved as outputs: a graph built from them in a
    double backward leads back to this node, and through it to the input.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        width: int,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, xhat, rstd = _layer_norm_forward(input, width, weight, bias, eps, keep=True)
        xhat = _as(xhat, xhat.shape, input.dtype)  # half inputs: saved in their precision
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.set_materialize_grads(False)
        ctx.meta = _Saved(input, weight, bias)
        return y, xhat, rstd

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_y: Tensor | None, grad_xhat: Tensor | None, grad_rstd: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        xhat, rstd, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        xhat = _as(xhat, xhat.shape, rstd.dtype)
        w = None if weight is None else _as(weight, xhat.shape[-1:], rstd.dtype)
        g = None if grad_y is None else _as(grad_y, xhat.shape, rstd.dtype)
        db = g.sum(0) if need_b and g is not None else None
        if g is None and grad_xhat is None and grad_rstd is None:
            return ctx.meta.grads(None, None, None)
        if _in_place_backward(grad_xhat, grad_rstd) and g is not None:
            return ctx.meta.grads(*_layer_norm_grads(g, xhat, rstd, w, need_x, need_w), db)
        gw = g if g is None or w is None else g * w
        dx = _standardize_grad(gw, xhat, rstd, grad_xhat, grad_rstd) if need_x else None
        dw = (g * xhat).sum(0) if need_w and g is not None else None
        return ctx.meta.grads(dx, dw, db)


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
    ops = kernels.ops_for(input, weight, bias)
    if ops is not None:  # eager on CPU or CUDA: the fused kernels
        return fused.layer_norm(input, shape, weight, bias, eps, ops)
    width = math.prod(shape)
    if not _records_graph(input, weight, bias):
        return _layer_norm_forward(input, width, weight, bias, eps, keep=False)[0]
    return _LayerNorm.apply(input, weight, bias, width, eps)[0]


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
    """Group norm as differentiable tensor operations (``torch.compile``, empty input)."""
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


def _channel_affine(
    xhat: Tensor, weight: Tensor | None, bias: Tensor | None, out: Tensor | None
) -> Tensor:
    """``xhat * weight_c + bias_c`` for ``xhat`` of shape ``(N, C, positions)``.

    One fused multiply-add when there is one position per channel; otherwise a multiply and
    an add (ATen vectorises a loop with one per-row scalar operand, not with two).
    """
    n, c, positions = xhat.shape
    if positions == 1:
        xhat = xhat.view(n, c)
        out = None if out is None else out.view(n, c)
    shape = (c,) if positions == 1 else (c, 1)
    w = None if weight is None else weight.view(shape)
    b = None if bias is None else bias.view(shape)
    if w is not None and b is not None and positions == 1:
        return torch.addcmul(b, xhat, w, out=out)
    if w is not None:
        y = torch.mul(xhat, w, out=out)
        return y if b is None else y.add_(b)
    if b is not None:
        return torch.add(xhat, b, out=out)
    return xhat if out is not None else xhat.clone()


def _group_norm_forward(
    input: Tensor,
    groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    keep: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, xhat, rstd)``: rows ``(N * G, C / G * positions)``, ``y = xhat * w_c + b_c``.

    ``keep=False`` (nothing saved for a backward) computes ``y`` in ``xhat``'s memory.
    """
    n, c = input.shape[:2]
    x = _as(input, (n * groups, input.numel() // (n * groups)), _compute_dtype(input.dtype))
    xhat, rstd = _standardize(x, eps)
    per_channel = xhat.view(n, c, -1)
    y = _channel_affine(per_channel, weight, bias, None if keep else per_channel)
    return _as(y, input.shape, input.dtype), xhat, rstd


def _group_norm_grads(
    g: Tensor,
    xhat: Tensor,
    rstd: Tensor,
    w: Tensor | None,
    groups: int,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dweight, dbias)`` for ``g`` of shape ``(N, C, positions)``, in place.

    Sums per (sample, channel) over positions, ``sg = sum(g)`` and ``sgx = sum(g * xhat)``,
    give ``dbias = sum_n sg``, ``dweight = sum_n sgx``, and per (sample, group) of ``S``
    values ``a = sum_c w_c sg`` and ``b = sum_c w_c sgx``; then one pass of multiply-adds::

        dx = (rstd * w_c) * g - rstd * (a + b * xhat) / S
    """
    need_x, need_w, need_b = needs
    g = g.contiguous()  # a channels_last gradient arrives as a strided view; gx is viewed below
    n, c, positions = g.shape
    gx = g * xhat.view(n, c, positions)
    if positions == 1:
        sg, sgx = g.view(n, c), gx.view(n, c)
    else:
        sg, sgx = g.sum(-1), gx.sum(-1)
    db = sg.sum(0) if need_b else None
    dw = sgx.sum(0) if need_w else None
    if not need_x:
        return None, dw, db
    if w is not None:
        sg, sgx = sg * w, sgx * w
    a = sg.view(n, groups, -1).sum(-1, keepdim=True)
    b = sgx.view(n, groups, -1).sum(-1, keepdim=True)
    k = rstd.view(n, groups, 1) * (-1.0 / xhat.shape[-1])
    dx = torch.mul(xhat.view(n, groups, -1), b.mul_(k), out=gx.view(n, groups, -1))
    dx.add_(a.mul_(k))  # gx is summed: its memory becomes dx
    scale = rstd.view(n, groups, 1)
    scale = scale.expand(n, groups, c // groups) if w is None else scale * w.view(groups, -1)
    return gx.addcmul_(g, scale.reshape(n, c, 1)), dw, db


class _GroupNorm(torch.autograd.Function):
    """Group norm of ``(N, C, *)``; statistics per (sample, group); closed-form backward.

    ``forward -> (y, xhat, rstd)`` with ``xhat`` of shape ``(N * G, S)``; see
    :class:`_LayerNorm` for why ``xhat`` and ``rstd`` are outputs.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        num_groups: int,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        y, xhat, rstd = _group_norm_forward(input, num_groups, weight, bias, eps, keep=True)
        xhat = _as(xhat, xhat.shape, input.dtype)  # half inputs: saved in their precision
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.set_materialize_grads(False)
        ctx.num_groups, ctx.meta = num_groups, _Saved(input, weight, bias)
        return y, xhat, rstd

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_y: Tensor | None, grad_xhat: Tensor | None, grad_rstd: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        xhat, rstd, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        n, c = ctx.meta.input[0][:2]
        xhat = _as(xhat, xhat.shape, rstd.dtype)
        w = None if weight is None else _as(weight, weight.shape, rstd.dtype)
        g = None if grad_y is None else _as(grad_y, (n, c, xhat.numel() // (n * c)), rstd.dtype)
        if g is None and grad_xhat is None and grad_rstd is None:
            return ctx.meta.grads(None, None, None)
        if _in_place_backward(grad_xhat, grad_rstd) and g is not None:
            return ctx.meta.grads(*_group_norm_grads(g, xhat, rstd, w, ctx.num_groups, needs))
        dx = dw = db = None
        if needs[0]:
            gw = g if g is None or w is None else g * w.view(c, 1)
            gw = None if gw is None else gw.reshape(xhat.shape)
            dx = _standardize_grad(gw, xhat, rstd, grad_xhat, grad_rstd)
        if g is not None:
            dw = (g * xhat.view(g.shape)).sum((0, 2)) if needs[1] else None
            db = g.sum((0, 2)) if needs[2] else None
        return ctx.meta.grads(dx, dw, db)


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
    ops = kernels.ops_for(input, weight, bias)
    if ops is not None:  # eager on CPU or CUDA: the fused kernels
        return fused.group_norm(input, num_groups, weight, bias, eps, ops)
    if not _records_graph(input, weight, bias):
        return _group_norm_forward(input, num_groups, weight, bias, eps, keep=False)[0]
    return _GroupNorm.apply(input, weight, bias, num_groups, eps)[0]


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
