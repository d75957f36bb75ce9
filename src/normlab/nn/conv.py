"""LeNet's 2D convolution with a cheaper eager-CPU training path: ``torch.nn.Conv2d``'s numbers.

A convolution with stride 1, no padding, no dilation and one group is, for an input ``x``
of shape ``(N, C, H, W)``, a weight ``w`` of shape ``(O, C, kh, kw)`` and a bias ``b``::

    y[n, o, i, j] = b[o] + sum_{c, a, e} w[o, c, a, e] * x[n, c, i + a, j + e]

with ``y`` of shape ``(N, O, H - kh + 1, W - kw + 1)``. Its gradients, for ``g = dL/dy``::

    dL/dw[o, c, a, e] = sum_{n, i, j} g[n, o, i, j] * x[n, c, i + a, j + e]
    dL/db[o]          = sum_{n, i, j} g[n, o, i, j]
    dL/dx             = the transposed convolution of g with w

On the CPU torch runs all three through oneDNN, whose blocked layouts cost reorders to
and from torch's ``NCHW`` (for LeNet's first layer, 6 channels padded to 8 or 16, the
reorders take longer than the convolution) and whose weight-gradient kernel is slower
than its forward one. :class:`Conv2d` takes two shortcuts there, in training (eager, CPU,
float32/float64, contiguous input):

- **one input channel** (LeNet's first layer): im2col. The windows of ``x`` are copied
  once into ``cols`` of shape ``(N, kh * kw, L)`` (``L = OH * OW``), then
  ``y[n] = b + w.view(O, K) @ cols[n]`` (one batched matrix product) and, backward,
  ``dL/dw = sum_n g[n] @ cols[n]^T`` (one more): no layout reorder, and ``cols`` is
  computed once for both. ``dL/dx`` (never needed for an image batch) comes from torch.
- **several input channels**: torch's forward; backward ``dL/dx`` alone from torch, and
  ``dL/dw`` as a forward convolution with the batch as the channels,
  ``conv2d(x^T, g^T)^T`` (``^T`` swapping the first two dimensions: ``(C, N, H, W)``
  convolved with ``(O, N, OH, OW)`` gives ``(C, O, kh, kw)``), which oneDNN runs with its
  faster forward kernel.

Both give torch's values up to float rounding (sums in another order). Anything else
(other strides, padding, dilation, groups, evaluation, ``torch.compile``, CUDA) is
``torch.nn.Conv2d.forward`` itself. A second derivative goes through torch's
differentiable ``convolution_backward``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_FLOATS = (torch.float32, torch.float64)


def _windows(input: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """im2col: ``cols[n, (c, a, e), (i, j)] = input[n, c, i + a, j + e]``, shape
    ``(N, C * kh * kw, OH * OW)``, one copy of a strided view."""
    n, c, h, w = input.shape
    oh, ow = h - kh + 1, w - kw + 1
    sn, sc, sh, sw = input.stride()
    view = input.as_strided((n, c, kh, kw, oh, ow), (sn, sc, sh, sw, sh, sw))
    return view.reshape(n, c * kh * kw, oh * ow)


def _torch_grads(
    grad: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, needs: tuple[bool, ...]
) -> tuple[torch.Tensor | None, ...]:
    """``(dx, dw, db)`` from torch's differentiable ``convolution_backward`` (stride 1, no
    padding), each ``None`` where ``needs`` says so."""
    mask = [needs[0], needs[1], needs[2]]
    bias_sizes = [weight.shape[0]] if needs[2] else None
    dx, dw, db = torch.ops.aten.convolution_backward(
        grad, input, weight, bias_sizes, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask
    )
    return (dx if needs[0] else None, dw if needs[1] else None, db if needs[2] else None)


class _Im2colConv(torch.autograd.Function):
    """Convolution of a one-channel input as ``cols`` times the weight (module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        n = input.shape[0]
        o, _, kh, kw = weight.shape
        oh, ow = input.shape[2] - kh + 1, input.shape[3] - kw + 1
        cols = _windows(input, kh, kw)  # (N, K, L)
        w = weight.reshape(1, o, -1).expand(n, -1, -1)  # (N, O, K), a view
        if bias is None:
            out = torch.bmm(w, cols)
        else:
            out = torch.baddbmm(bias.view(1, o, 1).expand(n, o, oh * ow), w, cols)
        ctx.save_for_backward(input, weight, cols)
        return out.view(n, o, oh, ow)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        input, weight, cols = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled() or needs[0]:  # a graph of the backward, or dL/dx
            return _torch_grads(grad.contiguous(), input, weight, needs)
        n, o = grad.shape[:2]
        g = grad.reshape(n, o, -1)  # (N, O, L)
        dw = torch.bmm(g, cols.transpose(1, 2)).sum(0).view_as(weight) if needs[1] else None
        db = g.sum((0, 2)) if needs[2] else None
        return None, dw, db


class _BatchAsChannelsConv(torch.autograd.Function):
    """torch's convolution whose weight gradient is a forward convolution over the batch."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(input, weight)
        return F.conv2d(input, weight, bias)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        grad = grad.contiguous()
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            return _torch_grads(grad, input, weight, needs)
        dx = _torch_grads(grad, input, weight, (True, False, False))[0] if needs[0] else None
        dw = None
        if needs[1]:
            dw = F.conv2d(input.transpose(0, 1), grad.transpose(0, 1)).transpose(0, 1)
        db = grad.sum((0, 2, 3)) if needs[2] else None
        return dx, dw, db


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` with a cheaper training path on the CPU (see the module docstring).

    Same constructor, parameters (``weight`` ``(O, C, kh, kw)``, ``bias`` ``(O,)``) and
    ``state_dict`` keys as ``torch.nn.Conv2d``. With stride 1, no padding, no dilation, one
    group and zero padding mode, in training (grad enabled) on a contiguous float32/float64
    4D CPU input in eager mode, one input channel takes the im2col path and several take
    the batch-as-channels weight gradient; everything else is ``torch.nn.Conv2d.forward``.

    Shape:
        input ``(N, C, H, W)``, output ``(N, O, H - kh + 1, W - kw + 1)`` on the fast paths.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._fast_path_applies(input):
            return super().forward(input)
        if self.in_channels == 1:
            return _Im2colConv.apply(input, self.weight, self.bias)
        return _BatchAsChannelsConv.apply(input, self.weight, self.bias)

    def _fast_path_applies(self, input: torch.Tensor) -> bool:
        return (
            torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and input.dim() == 4
            and input.is_cpu
            and input.dtype in _FLOATS
            and input.dtype == self.weight.dtype
            and self.weight.is_cpu
            and input.is_contiguous()
            and input.shape[1] == self.in_channels
            and input.shape[-2] >= self.kernel_size[0]
            and input.shape[-1] >= self.kernel_size[1]
            and self.stride == (1, 1)
            and self.padding in ((0, 0), "valid")
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
        )
