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
