"""What every check of the audit stands on: the layer and its twin built alike, seeded
inputs, and the tolerances of a comparison.

The audited layer is opaque: the audit knows only its constructor (called with the twin's
arguments), its ``forward``, ``train()``/``eval()``, ``parameters()`` (in the twin's order,
``weight`` then ``bias``: the layer's names and shapes may differ), ``state_dict`` and
``.to()``. Every comparison is in float64 unless a check is about another dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from normlab.testing.auditing.kinds import Kind
from normlab.testing.tolerance import sum_tolerance

__all__ = ["Bench", "Mismatch", "Step", "step"]

Factory = Callable[..., nn.Module]
DTYPE = torch.float64
INPUT_MEAN, INPUT_STD = 0.5, 1.5  # inputs of most checks: off zero, spread over a few units


class Mismatch(Exception):
    """The layer cannot be compared with its twin (e.g. parameters of other sizes)."""


@dataclass(frozen=True)
class Step:
    """One forward (and backward) of a layer: its output and gradients.

    ``parameter_grads`` are flattened, in ``parameters()`` order; empty when no backward ran.
    """

    output: Tensor
    input_grad: Tensor | None
    parameter_grads: tuple[Tensor, ...]


def step(layer: nn.Module, x: Tensor, upstream: Tensor | None) -> Step:
    """``layer(x)``, and with ``upstream`` the backward of ``sum(layer(x) * upstream)``."""
    if upstream is None:
        return Step(layer(x).detach(), None, ())
    x = x.detach().clone().requires_grad_()
    for parameter in layer.parameters():
        parameter.grad = None
    output = layer(x)
    output.backward(upstream)
    grads = tuple(
        torch.zeros(p.numel(), dtype=p.dtype) if p.grad is None else p.grad.detach().flatten()
        for p in layer.parameters()
    )
    input_grad = torch.zeros_like(x) if x.grad is None else x.grad  # no path: zero gradient
    return Step(output.detach(), input_grad, grads)


def max_difference(actual: Tensor, expected: Tensor) -> float:
    """``max|actual - expected|`` in float64 (``inf`` for a NaN, another shape or dtype)."""
    if actual.shape != expected.shape:
        raise Mismatch(
            f"the layer returned shape {tuple(actual.shape)}, the twin {tuple(expected.shape)}"
        )
    difference = (actual.double() - expected.double()).abs()
    return float(difference.nan_to_num(float("inf")).max()) if difference.numel() else 0.0


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run with torch's global generator at ``seed``, leaving the caller's state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Bench:
    """Builds the layer and its twin, inputs and tolerances for the checks.

    Args:
        factory: builds the audited layer from the twin's constructor arguments.
        kind: which twin, arguments and input shape.
        seed: seeds every input (each check draws from its own generator).
    """

    def __init__(self, factory: Factory, kind: Kind, seed: int = 0) -> None:
        self.factory, self.kind, self.seed = factory, kind, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.memo: dict[str, Any] = {}  # measurements shared by several checks

    # ------------------------------------------------------------------ layers

    def layer(self, dtype: torch.dtype = DTYPE, **kwargs: object) -> nn.Module:
        """A fresh layer (built the same way each time: its constructor runs seeded)."""
        with seeded(self.seed):
            layer = self.factory(*self.kind.args, **kwargs)
        return layer.to(dtype)

    def twin(self, dtype: torch.dtype = DTYPE, **kwargs: object) -> nn.Module:
        return self.kind.twin(*self.kind.args, **kwargs).to(dtype)

    def matched_pair(self) -> tuple[nn.Module, nn.Module]:
        """The layer and its twin in float64 with the same random parameters."""
        layer, twin = self.layer(), self.twin()
        pairs = parameter_pairs(layer, twin)
        with torch.no_grad():
            for ours, theirs in pairs:
                theirs.copy_(
                    1 + 0.5 * self.randn(theirs.shape)
                    if theirs is getattr(twin, "weight", None)
                    else 0.5 * self.randn(theirs.shape)
                )
                ours.copy_(theirs.view(ours.shape))
        return layer, twin

    # ------------------------------------------------------------------ inputs

    def randn(
        self,
        shape: tuple[int, ...],
        mean: float = 0.0,
        std: float = 1.0,
        dtype: torch.dtype = DTYPE,
    ) -> Tensor:
        values = torch.randn(shape, generator=self.generator, dtype=torch.float64)
        return (values * std + mean).to(dtype)

    def input(
        self,
        shape: tuple[int, ...] | None = None,
        mean: float = INPUT_MEAN,
        std: float = INPUT_STD,
        dtype: torch.dtype = DTYPE,
    ) -> Tensor:
        return self.randn(self.kind.shape if shape is None else shape, mean, std, dtype)

    # ------------------------------------------------------------------ tolerances

    def output_tolerance(self, x: Tensor, twin: nn.Module) -> float:
        """How far two float64 normalisations of ``x`` may differ: the statistics sum
        ``m`` terms of size ``|x| / std`` (normalised units), then scale by ``|gamma|``."""
        m = self.kind.values_per_statistic
        scale = _normalised_scale(x, self.kind) * _parameter_scale(twin)
        return float(sum_tolerance(DTYPE, m, m * scale))

    def grad_tolerance(self, x: Tensor, upstream: Tensor, twin: nn.Module) -> float:
        """Input gradients sum ``m`` terms of size ``|gamma| / std * |g| * (1 + |x_hat|)^2``;
        parameter gradients sum ``|g| * |x_hat|`` over every value sharing a parameter."""
        m = self.kind.values_per_statistic
        shared = x.numel() // x.shape[self.kind.feature_dim]
        x_scale = _normalised_scale(x, self.kind)
        g = float(upstream.abs().max())
        input_term = g * _parameter_scale(twin) * x_scale**2 / _min_std(x, self.kind)
        terms = max(m, shared)
        return float(sum_tolerance(DTYPE, terms, terms * max(input_term, g * x_scale)))


def _statistics_dims(x: Tensor, kind: Kind) -> tuple[Tensor, Tensor]:
    """Per-statistic mean and std of ``x`` (groups of group norm folded in)."""
    if kind.name == "group":
        groups = kind.args[0]
        x = x.reshape(x.shape[0], groups, -1)
        return x.mean(-1), x.std(-1, unbiased=False)
    if kind.name == "rms":
        rms = x.square().mean(kind.reduced_dims).sqrt()
        return torch.zeros_like(rms), rms
    return x.mean(kind.reduced_dims), x.std(kind.reduced_dims, unbiased=False)


def _min_std(x: Tensor, kind: Kind) -> float:
    _, std = _statistics_dims(x.double(), kind)
    return max(float(std.min()), 1e-12)


def _normalised_scale(x: Tensor, kind: Kind) -> float:
    """``1 + max|x| / min std``: the size of the normalised terms the statistics sum."""
    return 1 + float(x.double().abs().max()) / _min_std(x, kind)


def _parameter_scale(twin: nn.Module) -> float:
    values = [float(p.detach().abs().max()) for p in twin.parameters() if p.numel()]
    return 1 + max(values, default=0.0)


def parameter_pairs(layer: nn.Module, twin: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """The layer's parameters paired with the twin's, in order (``weight``, ``bias``).

    Raises:
        Mismatch: other counts or sizes (the message lists both).
    """
    ours, theirs = list(layer.parameters()), list(twin.parameters())
    if not theirs:
        return []
    if [p.numel() for p in ours] != [p.numel() for p in theirs]:
        raise Mismatch(
            f"parameters differ from the twin's: the layer has {_describe(layer)}, the twin "
            f"{_describe(twin)}"
        )
    return list(zip(ours, theirs, strict=True))


def _describe(module: nn.Module) -> str:
    named = [f"{n} {tuple(p.shape)}" for n, p in module.named_parameters()]
    return ", ".join(named) or "none"


def sgd_update(layer: nn.Module, learning_rate: float = 0.1) -> None:
    """``p -= lr * p.grad`` for every parameter with a gradient."""
    with torch.no_grad():
        for parameter in layer.parameters():
            if parameter.grad is not None:
                parameter -= learning_rate * parameter.grad
