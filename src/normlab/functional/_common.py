"""What every norm of :mod:`normlab.functional` shares: dtypes, shapes, checks and errors.

- Dtype promotion: float16 and bfloat16 inputs are normalised in float32 (statistics and
  arithmetic), the output returned in the input's dtype; float32 and float64 stay as
  they are (:func:`compute_dtype`).
- Shapes: batch-style norms reduce an ``(N, C, *)`` input over every dimension but the
  channels (:func:`reduce_dims`) and broadcast ``(C,)`` vectors over it
  (:func:`per_channel`).
- Errors: torch's messages; where torch raises ``RuntimeError`` ours is a
  :class:`ShapeError` (both a ``RuntimeError``, as torch code expects, and a
  :class:`~normlab.errors.UsageError`, which the CLI reports in one line).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack

from normlab.errors import UsageError

LOW_PRECISION = (torch.float16, torch.bfloat16)
_functorch = torch._C._functorch


class ShapeError(UsageError, RuntimeError):
    """A shape or argument torch rejects with ``RuntimeError``; also a ``ValueError``."""


class DtypeError(TypeError, NotImplementedError):
    """A dtype torch rejects (``NotImplementedError``, a ``RuntimeError``); also a TypeError."""


# ---------------------------------------------------------------------------------------------
# Dtypes and shapes
# ---------------------------------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and arithmetic in float32 for half-precision inputs, else the input dtype."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, without a call when it already is."""
    return t if t.dtype == dtype else t.to(dtype)


def as_layout(t: Tensor, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """``t`` viewed as ``shape`` in ``dtype``, calling torch only for what differs."""
    if t.shape != shape:
        t = t.reshape(shape)
    return t if t.dtype == dtype else t.to(dtype)


def reduce_dims(input: Tensor) -> list[int]:
    """The dimensions a batch-style norm reduces over: all but the channels, ``[0, 2, ...]``."""
    return [0, *range(2, input.dim())]


def per_channel(v: Tensor, ndim: int) -> Tensor:
    """View a ``(C,)`` vector as ``(C, 1, ..., 1)`` so that it broadcasts over ``(N, C, *)``."""
    return v if ndim == 2 else v.view(-1, *[1] * (ndim - 2))


def per_channel_as(v: Tensor, ndim: int, dtype: torch.dtype) -> Tensor:
    """:func:`per_channel` of ``v`` in ``dtype`` (converted only when it differs)."""
    return per_channel(as_dtype(v, dtype), ndim)


def records_graph(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> bool:
    """Whether autograd records this call: grad mode on and some tensor requires grad."""
    return torch.is_grad_enabled() and (
        input.requires_grad
        or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad)
    )


# ---------------------------------------------------------------------------------------------
# Checks: torch's errors and messages
# ---------------------------------------------------------------------------------------------


def check_floating(input: Any, fn: str) -> None:
    """A floating-point tensor, or torch's ``TypeError``/``NotImplementedError``."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}(): input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise DtypeError(
            f"{fn} needs a floating-point input, got {input.dtype}; convert it with .float()"
        )


def check_param_dtypes(input: Tensor, params: Sequence[Tensor | None], fn: str) -> None:
    """torch (CPU) wants parameters in the input dtype, or float32 for half-precision inputs."""
    if all(p is None or p.dtype == input.dtype for p in params):
        return
    present = [p for p in params if p is not None]
    allowed = {input.dtype, torch.float32} if input.dtype in LOW_PRECISION else {input.dtype}
    dtypes = {p.dtype for p in present}
    if len(dtypes) > 1 or not dtypes <= allowed:
        names = ", ".join(str(d) for d in sorted(dtypes, key=str))
        raise DtypeError(
            f"mixed dtype: {fn} got a {input.dtype} input with parameters of dtype {names}; "
            f"cast the parameters to {input.dtype}"
            + (" or float32" if input.dtype in LOW_PRECISION else "")
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


def check_normalized_shape(
    input: Tensor,
    normalized_shape: Any,
    params: dict[str, Tensor | None],
    fn: str,
) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple, checked against the input and the parameters."""
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
# Running statistics (batch-style norms)
# ---------------------------------------------------------------------------------------------


def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    n: int,
    momentum: float,
) -> None:
    """Move the running statistics towards the batch's (unbiased variance), in place.

    ``lerp(running, batch, momentum)`` is ``running + momentum * (batch - running)``, the
    same average as ``(1 - momentum) * running + momentum * batch`` in one operation
    (out of place: ``torch.func.vmap`` has a batching rule for it, not for ``lerp_``).
    ``var`` is the batch's biased variance over ``n`` values; ``mean`` and ``var`` are
    detached, so no graph is recorded.
    """
    if running_mean is not None:
        batch_mean = as_dtype(mean.detach(), running_mean.dtype)
        assign_running(running_mean, torch.lerp(running_mean, batch_mean, momentum))
    if running_var is not None:
        unbiased = as_dtype(var.detach().mul(n / (n - 1)), running_var.dtype)
        assign_running(running_var, torch.lerp(running_var, unbiased, momentum))


def assign_running(buffer: Tensor, value: Tensor) -> None:
    """``buffer.copy_(value)`` for a running statistic, also inside ``torch.func`` transforms.

    Under gradient transforms (``grad``, ``vjp``, ``jacrev``, ``jvp``) torch.func refuses
    in-place writes into a tensor captured from outside the transform, a buffer of a module
    called directly, say; ``torch.nn``'s kernels update their buffers below the transforms,
    unseen. Running statistics carry no derivative: the value's gradient levels are
    stripped and the write happens below the transforms, as torch's. A value still batched
    by ``vmap`` does not fit an unbatched buffer and is refused, as torch.nn's is.
    """
    value = value.detach()
    if _captured_by_transform(buffer):
        while _functorch.is_gradtrackingtensor(value):
            value = _functorch.get_unwrapped(value)
        if _functorch.is_functorch_wrapped_tensor(value):  # batched by vmap
            raise RuntimeError(
                "vmap: a batched input cannot update running statistics that are not batched; "
                "stack the modules' buffers (torch.func.stack_module_state), use evaluation "
                "mode, or set track_running_stats=False"
            )
        with temporarily_clear_interpreter_stack():
            buffer.copy_(value)
        return
    buffer.copy_(value)


def _captured_by_transform(buffer: Tensor) -> bool:
    """Inside a ``torch.func`` transform (not ``torch.compile``), ``buffer`` from outside it."""
    return (
        not torch.compiler.is_compiling()
        and torch._C._are_functorch_transforms_active()
        and not _functorch.is_functorch_wrapped_tensor(buffer)
    )
