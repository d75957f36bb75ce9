"""The covariate-shift experiment: invariants of its result, determinism, validation."""

from __future__ import annotations

import numpy as np
import pytest

from normlab.errors import UsageError
from normlab.lab.experiments.shift import (
    conclusion,
    covariate_shift,
    standardize,
    summary_rows,
)
from normlab.report.stats import ks_statistic


def test_standardised_samples_have_mean_0_and_std_1() -> None:
    result = covariate_shift()
    for sample in (result.train_standardized, result.test_standardized):
        assert abs(sample.mean()) < 1e-12
        assert abs(sample.std() - 1.0) < 1e-12
    # Each is an affine image of its raw sample with that sample's own statistics.
    pairs = ((result.train, result.train_standardized), (result.test, result.test_standardized))
    for raw, hat in pairs:
        np.testing.assert_allclose(hat, (raw - raw.mean()) / raw.std(), rtol=0, atol=1e-12)


def test_reported_moments_are_the_samples_moments() -> None:
    result = covariate_shift(num_samples=500, seed=3)
    assert result.train_before.mean == pytest.approx(result.train.mean(), abs=1e-15)
    assert result.test_before.std == pytest.approx(result.test.std(), abs=1e-15)
    assert result.test_after.mean == pytest.approx(0.0, abs=1e-12)
    assert result.train_after.std == pytest.approx(1.0, abs=1e-12)
    assert result.ks_before.statistic == ks_statistic(result.train, result.test)
    assert result.ks_after.statistic == ks_statistic(
        result.train_standardized, result.test_standardized
    )


def test_default_matches_the_tutorial_and_standardisation_removes_the_shift() -> None:
    result = covariate_shift()
    assert result.num_samples == 1000
    assert result.train_params == (0.0, 1.0) and result.test_params == (2.0, 1.5)
    # Samples of 1000 recover the asked parameters to a few standard errors.
    assert result.train_before.mean == pytest.approx(0.0, abs=4 / np.sqrt(1000))
    assert result.test_before.mean == pytest.approx(2.0, abs=4 * 1.5 / np.sqrt(1000))
    assert result.test_before.std == pytest.approx(1.5, rel=0.1)
    assert result.ks_after.statistic < result.ks_before.statistic
    assert result.ks_before.pvalue < 1e-50  # an unmistakable shift
    assert result.ks_after.pvalue > 0.01  # what is left is noise
    assert "sampling noise" in conclusion(result)


def test_standardisation_cannot_remove_a_difference_in_shape() -> None:
    result = covariate_shift(test_shape="skewed")
    # Same mean/std asked for, but exponential vs normal: the sup-distance between
    # Phi(x) and the standardised Exp(1) CDF is about 0.16 (at x = -1: Phi(-1) = 0.159).
    assert result.ks_after.statistic > 0.1
    assert result.ks_after.pvalue < 1e-6
    assert result.test.min() >= 2.0 - 1.5  # mean - std is the exponential's lower bound
    assert "not shape" in conclusion(result)


def test_same_seed_same_samples_other_seed_other_samples() -> None:
    a, b = covariate_shift(seed=5), covariate_shift(seed=5)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    c = covariate_shift(seed=6)
    assert not np.array_equal(a.train, c.train)


def test_parameters_are_used() -> None:
    result = covariate_shift(num_samples=20_000, train=(-3.0, 0.5), test=(10.0, 4.0), seed=1)
    assert result.train.size == result.test.size == 20_000
    assert result.train_before.mean == pytest.approx(-3.0, abs=0.02)
    assert result.train_before.std == pytest.approx(0.5, rel=0.03)
    assert result.test_before.mean == pytest.approx(10.0, abs=0.15)
    assert result.test_before.std == pytest.approx(4.0, rel=0.03)


def test_summary_rows() -> None:
    result = covariate_shift(num_samples=100)
    before, after = summary_rows(result)
    assert before["stage"] == "before" and after["stage"].startswith("after")
    assert before["test_mean"] == result.test_before.mean
    assert after["ks"] == result.ks_after.statistic and before["p"] == result.ks_before.pvalue


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 1}, "num_samples must be between 2"),
        ({"num_samples": 2.5}, "num_samples must be an integer"),
        ({"train": (0.0, 0.0)}, "train std must be a finite number > 0"),
        ({"test": (1.0, -1.0)}, "test std must be a finite number > 0"),
        ({"test": (float("nan"), 1.0)}, "test mean must be finite"),
        ({"test": (1.0,)}, "test must be a \\(mean, std\\) pair"),
        ({"test_shape": "uniform"}, "unknown test_shape 'uniform'; valid: normal, skewed"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        covariate_shift(**kwargs)
    assert "\n" not in str(info.value)


def test_standardize_rejects_a_constant_sample() -> None:
    with pytest.raises(UsageError, match="constant sample"):
        standardize(np.ones(5))
