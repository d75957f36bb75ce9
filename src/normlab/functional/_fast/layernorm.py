"""Layer norm's fast paths: normlab's kernels, and the formulas in place on tensors.

:mod:`normlab.functional.layernorm` holds the formulas; here is how they run eagerly.

- The operator (:class:`OperatorLayerNorm`): ``torch.ops.normlab.layer_norm``, the loops of
  ``layer_norm.cpp`` with their backward registered for autograd in C++ (``autograd.cpp``),
  one call with no Python ``autograd.Function``; the same loops, so the same bits. On CUDA
  its kernels are the Triton ones (:func:`normlab.kernels.cuda_operators`).
- Kernels (:class:`KernelLayerNorm`): ``layer_norm.cpp`` on the CPU, the Triton kernels of
  :mod:`normlab.kernels.triton.feature_norm` on CUDA: a few passes over the data each
  way. The forward returns two numbers per row (on the CPU the shift, a rounded mean, and
  ``rstd``, on CUDA the mean's offset from the row's first value and ``rstd``), from which
  the backward recomputes ``xhat`` in its loops.
- Tensors (:class:`TensorLayerNorm`): each pass one ATen call. The forward allocates one
  activation-sized tensor, ``xhat``, and computes the output in its memory; the backward
  recomputes ``xhat`` from the input (the same bits) and allocates one more, in which the
  row means (matrix-vector products) and multiply-adds assemble ``dx``.

Both save only ``input`` and ``weight`` (and the kernels' per-row numbers): no more bytes
than ``torch.nn`` saves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from normlab import kernels
from normlab.functional._autograd import FastPath, Grads, Operator, Saved, Stats
from normlab.functional._common import as_dtype, as_layout, compute_dtype
from normlab.functional._fast.rows import standardize

_KERNEL_FLOATS = (torch.float32, torch.float64)


def incoming(grad_out: Tensor, input: Tensor) -> Tensor:
    """The output gradient as the kernels take it: contiguous, in the input's dtype."""
    return as_dtype(grad_out.contiguous(), input.dtype)


@dataclass(slots=True)
class OperatorLayerNorm(Operator):
    """Layer norm over the trailing ``shape`` as ``torch.ops.normlab.layer_norm`` (``ops``)."""

    ops: Any
    shape: tuple[int, ...]
    eps: float

    def __call__(self, input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        return self.ops.layer_norm(input, self.shape, weight, bias, self.eps)


@dataclass(slots=True)
class KernelLayerNorm(FastPath):
    """Layer norm over rows of ``width`` values through ``ops`` (CPU or Triton kernels)."""

    ops: Any
    width: int
    eps: float

    def forward(
        self, input: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Stats]:
        out, stats = self.ops.layer_norm_forward(input, weight, bias, self.width, self.eps)
        return out, (stats,)

    def backward(self, grad_out: Tensor, saved: Saved) -> Grads:
        input, weight, (stats,) = saved.input, saved.weight, saved.stats
        grad_out = incoming(grad_out, input)
        return self.ops.layer_norm_backward(grad_out, input, stats, weight, *saved.needs)


@dataclass(slots=True)
class TensorLayerNorm(FastPath):
    """Layer norm over rows of ``width`` values as in-place tensor arithmetic."""

    width: int
    eps: float

    def _rows(self, input: Tensor) -> tuple[Tensor, Tensor]:
        """``(xhat, rstd)`` of the input's rows ``(R, width)``, in the computation dtype."""
        rows = input.numel() // self.width
        x = as_layout(input, (rows, self.width), compute_dtype(input.dtype))
        return standardize(x, self.eps)

    def forward(
        self, input: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Stats]:
        """``y = xhat * weight + bias``, computed in ``xhat``'s memory."""
        xhat, _ = self._rows(input)
        w = None if weight is None else weight.reshape(self.width)
        b = None if bias is None else bias.reshape(self.width)
        if w is not None and b is not None:
            y = torch.addcmul(b, xhat, w, out=xhat)
        elif w is not None:
            y = xhat.mul_(w)
        elif b is not None:
            y = xhat.add_(b)
        else:
            y = xhat
        return as_layout(y, input.shape, input.dtype), ()

    def backward(self, grad_out: Tensor, saved: Saved) -> Grads:
        xhat, rstd = self._rows(saved.input)
        g = as_layout(grad_out, xhat.shape, rstd.dtype)
        weight = saved.weight
        w = None if weight is None else as_layout(weight, (self.width,), rstd.dtype)
        need_x, need_w, need_b = saved.needs
        db = g.sum(0) if need_b else None
        return (*grads_in_place(g, xhat, rstd, w, need_x, need_w), db)


def grads_in_place(
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


def operator_for(
    input: Tensor, normalized_shape: Any, weight: Tensor | None, bias: Tensor | None
) -> Callable[..., Tensor] | None:
    """``torch.ops.normlab.layer_norm`` where it takes these arguments as they are, else None.

    The check a small layer can afford on every call (its Python time is as long as its
    arithmetic), in one go: the operator applies (:func:`normlab.kernels.operators_apply`:
    eager, CPU or CUDA, contiguous, one float32/float64 dtype), the input is not empty, and
    ``normalized_shape`` is a tuple of ints that ends the input's shape and is the
    parameters'. Anything else goes the long way: the checks and errors of
    :func:`normlab.functional.layernorm.layer_norm`, then :func:`fast_path`. The operator
    comes as its C++ callable (``OpOverload._op``): no Python frame in between.
    """
    if type(normalized_shape) is not tuple or not kernels.operators_apply(input, weight, bias):
        return None
    sizes, count = input.shape, len(normalized_shape)
    if not 0 < count <= len(sizes) or sizes[-count:] != normalized_shape or 0 in sizes:
        return None
    if (count > 1 or type(normalized_shape[0]) is not int) and not _ints(normalized_shape):
        return None  # e.g. (16.0,), equal to the sizes but not a shape
    if (weight is not None and weight.shape != normalized_shape) or (
        bias is not None and bias.shape != normalized_shape
    ):
        return None
    return kernels.ops().layer_norm.default._op


def _ints(values: tuple[Any, ...]) -> bool:
    """True when every value is an ``int`` (not a ``bool``, a float or a symbolic size)."""
    return all(type(value) is int for value in values)


#: Under ``torch.compile``, inputs of fewer elements, or whose normalized rows are shorter,
#: run the formula (layer and group norm with their closed-form backward): there the code
#: inductor generates for it (fused into its neighbours) costs less than two calls of an
#: operator it cannot see into; from these sizes on the operators' loops win (measured
#: with ``normlab bench layers --compile``: docs/results/bench-layers.md; rows of 6 and 16
#: values took 1.3-1.6x the compiled formula's time in the operator).
COMPILED_OPERATOR_MIN_ELEMENTS = 1 << 17
COMPILED_OPERATOR_MIN_ROW = 64


def compiled_ops(input: Tensor, row: Any, *params: Tensor | None) -> Any:
    """``torch.ops.normlab`` under ``torch.compile`` where its CPU operators take these
    tensors (CPU, one float32/float64 dtype, any strides, at least
    :data:`COMPILED_OPERATOR_MIN_ELEMENTS` elements in rows of at least
    :data:`COMPILED_OPERATOR_MIN_ROW`: ``row`` values are normalized together), else None.

    Layer, group and RMS norm's operators trace as one call each way (their Meta kernels
    give the shapes, symbolic ones too), and the compiled graph calls the loops eager mode
    runs: the same bits, and no slower than what inductor generates from the plain formula
    and its autograd. Not under ``torch.func`` transforms (the operators have no batching
    or forward-mode rules): the plain formula runs there. Nor before the kernels are loaded
    (:func:`normlab.kernels.loaded_ops`: loading inside the trace would break the graph).
    """
    if not torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return None
    ops = kernels.loaded_ops()
    dtype = input.dtype
    if ops is None or dtype not in _KERNEL_FLOATS or not input.is_cpu:
        return None
    if input.numel() < COMPILED_OPERATOR_MIN_ELEMENTS or row < COMPILED_OPERATOR_MIN_ROW:
        return None  # a guard on the size class
    for param in params:
        if param is not None and (param.dtype != dtype or not param.is_cpu):
            return None
    return ops


def trailing(input: Tensor, shape: tuple[Any, ...]) -> bool:
    """True when ``shape``, a tuple of one or more ints, ends ``input``'s non-empty shape."""
    count = len(shape)
    if count == 0 or input.numel() == 0 or input.dim() < count or not _ints(shape):
        return False
    return input.shape[input.dim() - count :] == shape


def fast_path(
    input: Tensor, shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None, eps: float
) -> FastPath | Operator:
    """The operator where it takes these tensors (:func:`normlab.kernels.operators_apply`),
    else the (Triton) kernels where they do, else the in-place tensor arithmetic."""
    if kernels.operators_apply(input, weight, bias):
        return OperatorLayerNorm(kernels.ops(), shape, eps)
    ops = kernels.ops_for(input, weight, bias)
    width = math.prod(shape)
    return TensorLayerNorm(width, eps) if ops is None else KernelLayerNorm(ops, width, eps)
