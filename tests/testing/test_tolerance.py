"""The derived tolerances accept two correct implementations and reject a wrong formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from normlab.testing.tolerance import (
    assert_close_sum,
    first_order_sums,
    normalization_sums,
    sum_tolerance,
    unit_roundoff,
)


def _unbiased_layer_norm(x: torch.Tensor) -> torch.Tensor:
    """A wrong formula: the unbiased variance where layer norm uses the biased one."""
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / (x.var(-1, keepdim=True, unbiased=True) + 1e-5).sqrt()


def test_unit_roundoff_and_sum_tolerance() -> None:
    assert unit_roundoff(torch.float32) == 2.0**-24
    assert sum_tolerance(torch.float64, 4, 1.0) == pytest.approx(2 * 6 * 2 * 2.0**-53)
    with pytest.raises(ValueError, match="terms must be at least 1"):
        sum_tolerance(torch.float64, 0, 1.0)


def test_float32_within_bound_of_float64_oracle() -> None:
    x, g = torch.randn(8, 64) * 3 + 1, torch.randn(8, 64)
    sums = first_order_sums(lambda t: F.layer_norm(t, [64]), [x], g)
    assert sums.terms == 64
    exact = F.layer_norm(x.double(), [64])
    assert_close_sum(F.layer_norm(x, [64]), exact, terms=64, abs_sum=sums.output)


def test_wrong_variance_fails_by_orders_of_magnitude() -> None:
    x, g = torch.randn(8, 64, dtype=torch.float64), torch.randn(8, 64, dtype=torch.float64)
    sums = normalization_sums(x, g, 1e-5)
    right, wrong = F.layer_norm(x, [64]), _unbiased_layer_norm(x)
    tolerance = sum_tolerance(torch.float64, 64, sums.output)
    assert bool(((right - wrong).abs() > 1e6 * tolerance).any())
    with pytest.raises(AssertionError, match="beyond the rounding bound"):
        assert_close_sum(wrong, right, terms=64, abs_sum=sums.output)


def test_normalization_sums_see_cancelling_terms() -> None:
    """One normalized element: the gradient is exactly zero (the Jacobian too), yet its
    terms g / sigma are not, and rounding shows at that scale."""
    x, g = torch.randn(5, 1, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    jacobian_sums = first_order_sums(lambda t: F.layer_norm(t, [1]), [x], g)
    assert bool((jacobian_sums.grads[0] == 0).all())
    sums = normalization_sums(x, g, 1e-5)
    assert bool((sums.grad_input >= 2 * g.abs() / 1e-5**0.5).all())  # |g| + mean|g|, / sigma
