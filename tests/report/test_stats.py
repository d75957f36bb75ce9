"""normlab.report.stats against closed forms, hand-computed examples and (when installed) scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from normlab.errors import UsageError
from normlab.report.stats import (
    MeanStd,
    format_bytes,
    format_duration,
    format_fixed,
    format_mean_std,
    format_number,
    format_percent,
    format_pvalue,
    kolmogorov_sf,
    ks_2samp,
    ks_statistic,
    mean_std,
    summarize,
)

# ------------------------------------------------------------------ KS statistic


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1.0, 2.0, 3.0], [4.0, 5.0], 1.0),  # disjoint: the CDFs reach 1 and 0
        ([1.0, 3.0], [2.0, 4.0], 0.5),  # interleaved: at x=1 (or 3) F_a - F_b = 1/2
        # ties: at x=2, F_a = 3/4 and F_b = 1/4 (both CDFs right-continuous)
        ([1.0, 2.0, 2.0, 3.0], [2.0, 3.0, 3.0, 4.0], 0.5),
        ([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], 0.0),  # same sample
        ([5.0], [5.0, 6.0, 7.0, 8.0], 0.75),  # at x=5: F_a = 1, F_b = 1/4
    ],
)
def test_ks_statistic_hand_computed(a: list[float], b: list[float], expected: float) -> None:
    assert ks_statistic(a, b) == pytest.approx(expected, abs=1e-15)
    assert ks_statistic(b, a) == pytest.approx(expected, abs=1e-15)  # symmetric


def test_ks_statistic_brute_force_on_a_grid() -> None:
    # D = sup_x |F_a(x) - F_b(x)| evaluated directly on every pooled point and midpoints.
    rng = np.random.default_rng(3)
    a = rng.integers(0, 8, 37).astype(float)  # many ties
    b = rng.normal(3.0, 2.0, 23).round(1)
    grid = np.union1d(np.concatenate([a, b]), np.linspace(-10, 15, 2001))
    cdf_a = np.array([(a <= x).mean() for x in grid])
    cdf_b = np.array([(b <= x).mean() for x in grid])
    assert ks_statistic(a, b) == pytest.approx(np.abs(cdf_a - cdf_b).max(), abs=1e-15)


def test_ks_statistic_invariant_under_monotone_maps() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=200), rng.normal(0.5, 1.0, 150)
    assert ks_statistic(np.exp(a), np.exp(b)) == pytest.approx(ks_statistic(a, b), abs=1e-15)


@pytest.mark.parametrize(
    ("a", "message"),
    [([], "empty"), ([1.0, float("nan")], "NaN"), ([[1.0, 2.0]], "1-D")],
)
def test_ks_rejects_bad_samples(a: list, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ks_2samp(a, [1.0, 2.0])


# --------------------------------------------------------------- Kolmogorov law


@pytest.mark.parametrize(
    ("x", "p"),
    # The classic critical values of the Kolmogorov distribution (tables, x to 4 decimals).
    [(1.2238, 0.10), (1.3581, 0.05), (1.4802, 0.025), (1.6276, 0.01), (1.9495, 0.001)],
)
def test_kolmogorov_sf_critical_values(x: float, p: float) -> None:
    assert kolmogorov_sf(x) == pytest.approx(p, abs=5e-5)  # x is given to 4 decimals


def test_kolmogorov_sf_series_agree_across_the_switch() -> None:
    # Q(x) by each of the two theta-function series, written out here independently.
    def alternating(x: float) -> float:
        return 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 200))

    def jacobi(x: float) -> float:
        s = sum(math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * x * x)) for k in range(1, 200))
        return 1 - math.sqrt(2 * math.pi) / x * s

    for x in np.linspace(0.4, 3.0, 27):
        assert alternating(x) == pytest.approx(jacobi(x), abs=1e-13)
        assert kolmogorov_sf(x) == pytest.approx(alternating(x), rel=1e-12, abs=1e-15)


def test_kolmogorov_sf_limits_and_tail() -> None:
    assert kolmogorov_sf(0.0) == 1.0
    assert kolmogorov_sf(-1.0) == 1.0
    assert kolmogorov_sf(0.1) == pytest.approx(1.0, abs=1e-15)
    # far tail: Q(x) ~ 2 exp(-2 x^2) with full relative precision (no 1 - cdf cancellation)
    assert kolmogorov_sf(10.0) == pytest.approx(2 * math.exp(-200.0), rel=1e-12)
    xs = np.linspace(0.05, 4, 200)
    values = [kolmogorov_sf(x) for x in xs]
    assert all(np.diff(values) <= 0)  # a survival function


def test_ks_2samp_pvalue_is_the_asymptotic_formula() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(0.2, 1.0, 200)
    result = ks_2samp(a, b)
    lam = math.sqrt(300 * 200 / 500) * result.statistic
    expected = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 200))
    assert result.pvalue == pytest.approx(expected, rel=1e-12)


def test_ks_2samp_matches_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    for n, m, shift in [(1000, 1000, 0.0), (1000, 1000, 2.0), (400, 250, 0.3), (60, 90, 0.5)]:
        a, b = rng.normal(size=n), rng.normal(shift, 1.5, m)
        ours = ks_2samp(a, b)
        theirs = scipy_stats.ks_2samp(a, b, method="asymp")
        assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-15)
        lam = math.sqrt(n * m / (n + m)) * ours.statistic
        assert ours.pvalue == pytest.approx(scipy_stats.kstwobign.sf(lam), rel=1e-10, abs=1e-300)


# ---------------------------------------------------------------- across seeds


def test_summarize_closed_form() -> None:
    assert summarize([1.0, 2.0, 3.0, 4.0]) == MeanStd(2.5, math.sqrt(5 / 3), 4)
    assert summarize([0.7]) == MeanStd(0.7, 0.0, 1)
    with pytest.raises(UsageError, match="no values"):
        summarize([])


def test_mean_std_over_seeds() -> None:
    runs = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 5.0]])  # (seeds, epochs)
    mean, std = mean_std(runs)
    np.testing.assert_allclose(mean, [2.0, 2.0, 4.0])
    np.testing.assert_allclose(std, [math.sqrt(2), 0.0, math.sqrt(2)])  # ddof=1
    mean1, std1 = mean_std(runs[:1])
    np.testing.assert_array_equal(mean1, runs[0])
    np.testing.assert_array_equal(std1, 0.0)


# ------------------------------------------------------------------ formatting


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (88.41234, "88.41"),
        (0.031234, "0.03123"),
        (1.5e-7, "1.500e-07"),
        (2.5e7, "2.500e+07"),
        (12345.6, "12346"),
        (-3.14159, "-3.142"),
        (-1e-5, "-1.000e-05"),
        (0.0, "0"),
        (3, "3"),
        (np.int64(7), "7"),
        (np.float32(0.5), "0.5000"),
        (True, "yes"),
        (None, "—"),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
        ("batch", "batch"),
    ],
)
def test_format_number(value: object, text: str) -> None:
    assert format_number(value) == text


def test_format_helpers() -> None:
    assert format_fixed(-1e-17, 3) == "0.000"  # no negative zero
    assert format_fixed(-0.0004, 3) == "0.000"
    assert format_fixed(-0.0006, 3) == "-0.001"
    assert format_percent(0.8843) == "88.4 %"
    assert format_pvalue(0.6475) == "0.65"
    assert format_pvalue(0.0123) == "0.012"
    assert format_pvalue(3.5e-154) == "3.5e-154"
    assert format_pvalue(0.0) == "< 1e-300"
    assert format_mean_std(MeanStd(88.4123, 0.2871, 3), unit="%") == "88.4 ± 0.3 %"
    assert format_mean_std(MeanStd(0.5512, 0.01234, 2)) == "0.551 ± 0.012"
    assert format_mean_std(MeanStd(88.4, 0.0, 1)) == "88.4"
    assert format_duration(0.045) == "45 ms"
    assert format_duration(2.34) == "2.3 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3720) == "1 h 02 min"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1.23e9) == "1.23 GB"
