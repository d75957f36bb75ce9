"""``_NormBase``: the state shared by batch and instance norm layers, as in ``torch.nn``.

The base owns the affine parameters ``weight``/``bias`` (or ``None``), the buffers
``running_mean``/``running_var``/``num_batches_tracked`` (or ``None``), their
initialisation, ``extra_repr`` and ``state_dict`` compatibility. Subclasses add the input
check and the forward. Names, shapes, dtypes and ``state_dict`` keys equal ``torch.nn``'s,
so a ``state_dict`` loads from ``torch.nn.BatchNorm2d`` into ``normlab.nn.BatchNorm2d`` and
back.

The classes are also subclasses of ``torch.nn``'s private bases (``_NormBase`` here,
``_BatchNorm`` and ``_InstanceNorm`` in the subclasses' modules), only so that the tools
that find normalization layers by ``isinstance`` find these ones too:
``torch.optim.swa_utils.update_bn`` recomputing running statistics, weight-decay groups,
fusion passes. None of torch's code runs: ``__init__`` builds the state itself (calling
``nn.Module.__init__`` directly) and every method torch's bases define is overridden.

The input checks shared by batch and instance norm (:func:`check_num_elements`,
:func:`check_floating`, :func:`check_mixed_dtype`) raise torch's exception types with
torch's messages, in torch's order.

The docstring text shared by the layers is written once here (``NORM_ARGS``,
``MOMENTUM_NOTE``) and filled into each class with :func:`document`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import init
from torch.nn.modules import batchnorm as torch_batchnorm

from normlab.functional import DtypeError, ShapeError

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Shared docstring text: written once, filled into every layer's docstring.
# ---------------------------------------------------------------------------------------------

NORM_ARGS = """num_features: :math:`C`, the number of features or channels of the input.
        eps: added to the variance for numerical stability. Default: 1e-5.
        momentum: weight of the newest batch in the running statistics,
            ``running = (1 - momentum) * running + momentum * batch``; ``None`` for a
            cumulative average over ``num_batches_tracked`` batches. Default: 0.1.
        affine: learnable per-channel scale ``weight`` (gamma) and shift ``bias`` (beta).
            Default: {affine}.
        track_running_stats: keep ``running_mean``/``running_var`` (unbiased variance)
            during training and normalise with them in evaluation; if ``False`` the buffers
            are ``None`` and batch statistics are used in both modes. Default: {track}.
        device, dtype: where and in which dtype parameters and buffers are created.
        bias: with ``affine``, whether to learn ``bias`` (keyword only). Default: ``True``."""

MOMENTUM_NOTE = """``momentum`` is not an optimizer's momentum: it is the weight of the new
    statistic: :math:`\\hat{x}_{new} = (1 - m) \\hat{x} + m x_t`."""


def document(**fields: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: replace ``{name}`` markers in the class docstring by ``fields[name]``.

    ``{args}`` (the shared Args text, itself filled with ``fields``, e.g. ``{affine}``) and
    ``{momentum_note}`` are always available. Other braces (LaTeX) are left alone.
    """

    def fill_text(text: str, values: dict[str, str]) -> str:
        for name, value in values.items():
            text = text.replace("{" + name + "}", value)
        return text

    def fill(cls: type[T]) -> type[T]:
        values = {"momentum_note": MOMENTUM_NOTE, **fields}
        values["args"] = fill_text(NORM_ARGS, values)
        cls.__doc__ = fill_text(cls.__doc__ or "", values)
        return cls

    return fill


def affine_parameters(module: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """``(module.weight, module.bias)``, read from its parameter dict: ``nn.Module``'s
    attribute lookup costs about half a microsecond a name, a tenth of a small layer's call.
    Where one was moved out of the dict (a parametrized ``weight`` is a property computed on
    access, ``torch.nn.utils.parametrize``), both are read as attributes."""
    params = module._parameters
    try:
        return params["weight"], params["bias"]
    except KeyError:
        return module.weight, module.bias


# ---------------------------------------------------------------------------------------------
# Input checks: torch's exception types and messages
# ---------------------------------------------------------------------------------------------

_REDUCED_FLOATS = (torch.float16, torch.bfloat16)


def check_num_elements(named: tuple[tuple[str, Tensor | None], ...], expected: int) -> None:
    """Each given tensor has ``expected`` elements (one per channel), else torch's error.

    Raises:
        ShapeError: a ``RuntimeError`` as torch's (and a ``ValueError``), with its message.
    """
    for name, tensor in named:
        if tensor is not None and tensor.numel() != expected:
            raise ShapeError(f"{name} should contain {expected} elements not {tensor.numel()}")


def check_floating(input: Tensor, op: str) -> None:
    """A floating-point input, else torch's ``"op" not implemented for 'Long'`` and the way out.

    Raises:
        DtypeError: a ``NotImplementedError`` as torch's (and a ``TypeError``).
    """
    if not input.is_floating_point():
        raise DtypeError(
            f'"{op}" not implemented for {input.dtype}: the input must be floating point; '
            "convert it with input.float()"
        )


def check_mixed_dtype(input: Tensor, params: tuple[Tensor | None, ...]) -> None:
    """torch's rule on the CPU: parameters in the input's dtype, or all float32 for a float16
    or bfloat16 input ("mixed type"). The first defined parameter decides whether the call is
    mixed, as in torch; other devices are not checked here.

    Raises:
        DtypeError: a ``NotImplementedError`` (so a ``RuntimeError``, as torch's) with
            torch's message and the way out.
    """
    first = next((p for p in params if p is not None), None)
    if first is None or first.dtype == input.dtype or not input.is_cpu:
        return
    for param in params:
        if param is not None and param.dtype != torch.float32:
            raise DtypeError(
                "mixed dtype (CPU): expect parameter to have scalar type of Float; got a "
                f"{input.dtype} input with {param.dtype} parameters: cast the module with "
                f".to({input.dtype})"
            )
    if input.dtype not in _REDUCED_FLOATS:
        raise DtypeError(
            "mixed dtype (CPU): all inputs must share same datatype. Got a "
            f"{input.dtype} input with {first.dtype} parameters: cast the input or the module"
        )


class _NormBase(torch_batchnorm._NormBase):
    """Common base of batch and instance norm layers: parameters, buffers, bookkeeping.

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype, bias:
            as in ``torch.nn.BatchNorm2d`` (see the subclasses).
    """

    _version = 2  # version 2 added num_batches_tracked, as in torch.nn
    __constants__: ClassVar[list[str]] = [
        "track_running_stats",
        "momentum",
        "eps",
        "num_features",
        "affine",
    ]
    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        nn.Module.__init__(self)  # the state is built here, not by torch's initialiser
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory_kwargs))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            for buffer, value in (
                (self.running_mean, 0),
                (self.running_var, 1),
                (self.num_batches_tracked, 0),
            ):
                if buffer is not None:
                    buffer.fill_(value)

    def reset_parameters(self) -> None:
        """Reset the running statistics, and ``weight = 1``, ``bias = 0``."""
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Accept ``state_dict``s saved before ``num_batches_tracked`` existed (version < 2)."""
        version = local_metadata.get("version")
        if (version is None or version < 2) and self.track_running_stats:
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                tracked = self.num_batches_tracked
                usable = tracked is not None and tracked.device != torch.device("meta")
                state_dict[key] = tracked if usable else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
