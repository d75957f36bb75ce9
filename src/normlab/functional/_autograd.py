"""The autograd bridge: how every norm reaches its fast path.

Each norm module of :mod:`normlab.functional` starts with its plain formula: a forward
written as differentiable tensor operations and its closed-form backward. The plain
forward is what runs under ``torch.compile`` and ``torch.func`` transforms (both
differentiate and fuse ordinary tensor operations themselves) and for empty inputs:
:func:`eager` says when a fast path may run instead. (Under ``torch.compile`` on the CPU,
layer, group and RMS norm call their C++ operators, which trace as one call each way.)

Eagerly, a norm runs a :class:`FastPath` (normlab's C++ or Triton kernels, or in-place
tensor arithmetic, in :mod:`normlab.functional._fast`) through one ``autograd.Function``
shared by all norms::

    out = run(path, backward, input, weight, bias)

- ``path.forward(input, weight, bias) -> (out, stats)``: the output and the tensors its
  backward needs beyond ``input`` and ``weight`` (per-row or per-channel statistics);
  buffers a norm updates (running statistics) are the path's own attributes.
- ``path.backward(grad_out, saved) -> (dx, dweight, dbias)``: the first-order gradients
  from the :class:`Saved` tensors (``input``, ``weight``, ``stats``), ``None`` where
  ``saved.needs`` says so, in any shape of the right size and any dtype: the bridge
  returns them in the shapes and dtypes of the inputs.
- ``backward(grad_out, input, weight) -> (dx, dweight, dbias)``: the norm's closed form in
  differentiable operations, statistics recomputed from ``input``. The bridge calls it
  instead of ``path.backward`` when a graph of the backward is wanted (double backward,
  ``create_graph=True``), so higher derivatives are those of the plain formula.

The bridge saves ``input``, ``weight`` and the path's statistics (not ``bias``: only its
shape and dtype) and records nothing when no gradient is wanted (the path's forward runs
alone). It is never entered under ``torch.func``: the plain formula runs there.

A norm whose kernels are also one operator with its backward registered for autograd in C++
(normlab's CPU kernels: ``torch.ops.normlab.batch_norm_train``, ``layer_norm``,
``group_norm``, ``rms_norm``) picks an :class:`Operator` instead of a :class:`FastPath`
where they apply: ``run`` calls it directly, one dispatch with no Python
``autograd.Function`` (its backward runs in C++, a differentiable closed form there when a
graph of the backward is wanted).

A new norm plugs in by writing its plain formula, a :class:`FastPath` subclass, and
``if eager(input): return run(path, backward, input, weight, bias)`` in its public function.
Norms with more parameters than ``weight`` and ``bias`` (FRN, EvoNorm, DyT) keep the bridge
to its three and run one ``autograd.Function`` of their own (in
:mod:`normlab.functional._fast`), under the same :func:`eager` rule.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from normlab.functional._common import as_layout, records_graph

Grads = tuple[Tensor | None, Tensor | None, Tensor | None]
Needs = tuple[bool, bool, bool]
Stats = tuple[Tensor, ...]
Backward = Callable[[Tensor, Tensor, Tensor | None], Grads]


@dataclass(frozen=True, slots=True)
class Saved:
    """What a fast path's backward reads: the tensors the bridge saved in the forward
    (``input``, ``weight``, the path's ``stats``) and which of ``(dx, dweight, dbias)``
    are wanted (``needs``)."""

    input: Tensor
    weight: Tensor | None
    stats: Stats
    needs: Needs


def eager(input: Tensor) -> bool:
    """True where a fast path may run: a non-empty input, outside ``torch.compile`` and
    outside ``torch.func`` transforms (which then see the plain formula)."""
    return (
        input.numel() > 0
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
    )


class FastPath(abc.ABC):
    """A norm's fast forward and first-order backward, with its configuration."""

    __slots__ = ()

    @abc.abstractmethod
    def forward(
        self, input: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Stats]:
        """The output and the statistics the backward needs (saved with input and weight)."""

    @abc.abstractmethod
    def backward(self, grad_out: Tensor, saved: Saved) -> Grads:
        """``(dx, dweight, dbias)`` from the saved tensors; ``None`` where not needed."""


class Operator(abc.ABC):
    """A norm's kernels as one operator with its autograd in C++, with its configuration."""

    __slots__ = ()

    @abc.abstractmethod
    def __call__(self, input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """The output, recorded for autograd by the operator itself."""


def run(
    path: FastPath | Operator,
    backward: Backward,
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
) -> Tensor:
    """Normalise through ``path``, with autograd when a graph is recorded.

    ``backward`` is the norm's differentiable closed form, for higher derivatives (an
    :class:`Operator` has its own, in C++).
    """
    if isinstance(path, Operator):
        return path(input, weight, bias)
    if not records_graph(input, weight, bias):
        return path.forward(input, weight, bias)[0]
    return _Bridge.apply(path, backward, input, weight, bias)[0]


def _layout(t: Tensor | None) -> tuple[torch.Size, torch.dtype] | None:
    return None if t is None else (t.shape, t.dtype)


def _shaped(grad: Tensor | None, layout: tuple[torch.Size, torch.dtype] | None) -> Tensor | None:
    return None if grad is None or layout is None else as_layout(grad, *layout)


class _Bridge(torch.autograd.Function):
    """``(path, backward, input, weight, bias) -> (out, *stats)``; the statistics are
    outputs that carry no gradient, so that they are saved as outputs.

    Written with ``ctx`` in ``forward`` rather than ``setup_context``: the bridge never runs
    under ``torch.func`` (:func:`eager`), and ``setup_context`` costs a signature binding
    on every call (tens of microseconds, as much as a small layer's arithmetic).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        path: FastPath,
        backward: Backward,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
    ) -> tuple[Tensor, ...]:
        out, stats = path.forward(input, weight, bias)
        ctx.mark_non_differentiable(*stats)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, weight, *stats)
        ctx.path, ctx.backward = path, backward
        ctx.layouts = (_layout(input), _layout(weight), _layout(bias))
        return (out, *stats)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if grad_out is None:  # only the statistics were used: no gradient
            return (None,) * 5
        input, weight, *stats = ctx.saved_tensors
        needs: Needs = ctx.needs_input_grad[2:5]
        if torch.is_grad_enabled():  # a graph of the backward: the differentiable closed form
            grads = ctx.backward(grad_out, input, weight)
        else:
            grads = ctx.path.backward(grad_out, Saved(input, weight, tuple(stats), needs))
        shaped = (
            _shaped(grad, layout) if need else None
            for grad, layout, need in zip(grads, ctx.layouts, needs, strict=True)
        )
        return (None, None, *shaped)
