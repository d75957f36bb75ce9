"""Tolerances derived from the arithmetic: the dtype's rounding unit, the number of terms
a value sums, and the magnitude of those terms.

Two correct implementations of the same sum differ only by rounding, and how much depends
on the order in which they add (a CPU with AVX-512 blocks its reductions differently from
one with AVX2). For a value computed as a sum of ``n`` terms ``t_i``, the probabilistic
bound of Higham & Mary (2019, "A new approach to probabilistic rounding error analysis")
holds with overwhelming probability for any order of summation::

    |computed - exact| <= lam * sqrt(n) * u * sum_i |t_i|,     u = eps / 2

Two implementations are each within it, so they are within twice of each other. ``lam``
(here 6) sets the confidence: the bound fails with probability below 2·exp(-lam²/2) per
value, ~3e-8 at 6. A wrong formula misses by a relative O(1), many orders above this.

Shapes: every function accepts tensors and broadcasts, so a tolerance can be given per
element (``sum |t_i|`` differs from one output to the next).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

CONFIDENCE = 6.0  # lam above: the bound fails with probability < 2·exp(-18) per value


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2``: the largest relative error of one rounding in ``dtype``."""
    return torch.finfo(dtype).eps / 2


def sum_tolerance(
    dtype: torch.dtype, terms: int, abs_sum: float | torch.Tensor
) -> float | torch.Tensor:
    """How far two implementations of a sum of ``terms`` values may differ in ``dtype``:
    ``2 * lam * sqrt(terms) * u * abs_sum`` where ``abs_sum = sum_i |t_i|``."""
    if terms < 1:
        raise ValueError(f"terms must be at least 1, got {terms}")
    return 2 * CONFIDENCE * math.sqrt(terms) * unit_roundoff(dtype) * abs_sum


def assert_close_sum(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    terms: int,
    abs_sum: float | torch.Tensor,
    dtype: torch.dtype | None = None,
) -> None:
    """Assert ``|actual - expected| <= sum_tolerance(...)`` elementwise, where ``dtype`` is
    the precision both were computed in (default: ``actual``'s). The message names the
    worst element, its difference and its tolerance."""
    dtype = dtype or actual.dtype
    if actual.shape != expected.shape:
        raise AssertionError(f"shapes differ: {tuple(actual.shape)} != {tuple(expected.shape)}")
    difference = (actual.double() - expected.double()).abs()
    tolerance = sum_tolerance(dtype, terms, abs_sum)
    tolerance = torch.as_tensor(tolerance, dtype=torch.float64).expand_as(difference)
    excess = difference - tolerance
    if not bool((excess <= 0).all()):  # a NaN compares False: it fails too
        worst = int(excess.nan_to_num(math.inf).argmax())
        raise AssertionError(
            f"{int((excess > 0).sum())} of {difference.numel()} values differ beyond the "
            f"rounding bound: worst at flat index {worst}, |difference| "
            f"{difference.flatten()[worst].item():.3e} > tolerance "
            f"{tolerance.flatten()[worst].item():.3e} ({terms} terms in {dtype})"
        )


@dataclass(frozen=True)
class FirstOrderSums:
    """The terms of a function's output and of its backward, to first order, for
    ``sum_tolerance``: the output ``y_i`` moves by ``sum_j J_ij dx_j`` when its inputs
    round (``dx_j ~ u |x_j|``), and the backward computes ``grad_j = sum_i g_i J_ij``.

    ``output`` has ``y``'s shape: ``sum_j |J_ij| |x_j|`` over every input ``x`` (the
    condition of ``y_i``, so a normalization's ``|x - mean| / std`` plus the mean's share).
    ``grads`` has one tensor per input, of its shape: ``sum_i |g_i| |J_ij|`` (the
    backward's condition in ``g``) plus ``sum_k |d grad_j / d x_k| |x_k|`` (its condition
    in the inputs: a normalization's gradient cancels, ``J``'s entries alone understate it).
    ``terms``: the most nonzero entries of ``J`` in a row or a column (for a normalization,
    the elements it normalizes together, or the batch positions a parameter sees).
    """

    output: torch.Tensor
    grads: tuple[torch.Tensor, ...]
    terms: int


def first_order_sums(
    function: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    grad_output: torch.Tensor,
) -> FirstOrderSums:
    """``FirstOrderSums`` of ``y = function(*inputs)`` and ``grad_output`` ``g``, from the
    Jacobian ``J = dy/dx`` evaluated in float64 (``torch.autograd``; small inputs only:
    ``J`` has ``y.numel() * x.numel()`` entries per input).

    Shape: ``grad_output`` as ``function``'s output; ``inputs`` any shapes.
    Example: ``sums = first_order_sums(lambda x: F.layer_norm(x, [5]), [x], g)``, then
    ``assert_close_sum(out, ref, terms=sums.terms, abs_sum=sums.output)``.
    """
    exact = tuple(t.detach().double() for t in inputs)
    jacobians = torch.autograd.functional.jacobian(function, exact)
    g = grad_output.detach().double().abs().reshape(-1)
    output = torch.zeros(g.numel(), dtype=torch.float64)
    nonzero = torch.zeros(g.numel(), dtype=torch.int64)
    grads = []
    terms = 1
    for x, jacobian in zip(exact, jacobians, strict=True):
        matrix = jacobian.reshape(g.numel(), x.numel()).abs()
        output += matrix @ x.abs().reshape(-1)
        nonzero += (matrix != 0).sum(1)
        grads.append((g @ matrix).reshape(x.shape))
        terms = max(terms, int((matrix != 0).sum(0).max()) if matrix.numel() else 1)
    terms = max(terms, int(nonzero.max()) if nonzero.numel() else 1)
    backward_sums = _backward_condition(function, exact, grad_output.detach().double())
    grads = [a + b for a, b in zip(grads, backward_sums, strict=True)]
    return FirstOrderSums(output.reshape(grad_output.shape), tuple(grads), terms)


def _backward_condition(
    function: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], g: torch.Tensor
) -> list[torch.Tensor]:
    """``sum_k |d grad_j / d x_k| |x_k|`` per input: how far ``grad_j`` moves when the
    inputs round (the backward's condition in its inputs, ``g`` held fixed)."""

    def backward(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = function(*xs)
        return torch.autograd.grad(
            y, xs, g, create_graph=True, allow_unused=True, materialize_grads=True
        )

    jacobians = torch.autograd.functional.jacobian(backward, inputs)
    sums = []
    for grad_input, row in zip(inputs, jacobians, strict=True):
        total = torch.zeros(grad_input.numel(), dtype=torch.float64)
        for x, jacobian in zip(inputs, row, strict=True):
            matrix = jacobian.reshape(grad_input.numel(), x.numel()).abs()
            total += matrix @ x.abs().reshape(-1)
        sums.append(total.reshape(grad_input.shape))
    return sums


@dataclass(frozen=True)
class NormalizationSums:
    """``sum |terms|`` per element of a normalization's output and gradients, for
    ``sum_tolerance(dtype, n, ...)``; all of shape ``(M, n)``. ``weight_terms`` is what each
    element adds to the weight gradient ``sum g * x_hat``: sum it over the rows (and the
    elements) that share a weight, and count those as its terms."""

    output: torch.Tensor
    grad_input: torch.Tensor
    weight_terms: torch.Tensor


def normalization_sums(
    rows: torch.Tensor,
    grad_output: torch.Tensor,
    eps: float,
    *,
    centered: bool = True,
    weight: torch.Tensor | None = None,
) -> NormalizationSums:
    """The magnitudes of the terms of a normalization and its backward. With
    ``x_hat = (x - mean) / sigma`` over each row of ``n`` normalized elements and
    ``sigma = sqrt(var + eps)`` (``var`` biased; the mean square and no centering when
    ``centered`` is False, as RMS norm)::

        output      |w| * (|x - mean| + mean|x|) / sigma      (the mean's share, then x_hat's)
        grad_input  (|G| + mean|G| + m * mean|G| m) / sigma,   G = w * g
        weight      |g| * m,   m = |x_hat| + mean|x| / sigma

    The gradient ``(G - mean(G) - x_hat * mean(G * x_hat)) / sigma`` cancels (exactly, for
    ``n = 1``), so a Jacobian alone understates these. Its means hold the other elements'
    weights: where ``w`` varies along a row (group norm's channels, layer norm's features),
    an element of small weight still carries its neighbours' terms.

    Args:
        rows: the input, one normalized group per row. Shape ``(M, n)``.
        grad_output: the gradient ``g`` of the output. Shape ``(M, n)``.
        eps: the ``eps`` added to the variance.
        centered: subtract the mean (layer and group norm) or not (RMS norm).
        weight: the elementwise weight ``w``, broadcastable to ``(M, n)``; ``None``: ones.
    """
    x, g = rows.double(), grad_output.double().abs()
    centred = x - x.mean(1, keepdim=True) if centered else x
    sigma = (centred.square().mean(1, keepdim=True) + eps).sqrt()
    mean_share = x.abs().mean(1, keepdim=True) / sigma if centered else 0
    m = centred.abs() / sigma + mean_share
    w = torch.ones(()) if weight is None else weight.double().abs()
    weighted = w * g
    grad_input = (
        weighted + weighted.mean(1, keepdim=True) + m * (weighted * m).mean(1, keepdim=True)
    ) / sigma
    return NormalizationSums(output=w * m, grad_input=grad_input, weight_terms=g * m)
