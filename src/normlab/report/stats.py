"""Small pure statistics helpers: the two-sample Kolmogorov–Smirnov test, mean ± std across
seeds, and the number formatting every table and report shares.

Everything here is numpy and the standard library; nothing reads or writes files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from normlab.errors import UsageError

__all__ = [
    "MISSING",
    "KSResult",
    "MeanStd",
    "format_bytes",
    "format_duration",
    "format_fixed",
    "format_mean_std",
    "format_number",
    "format_percent",
    "format_pvalue",
    "kolmogorov_sf",
    "ks_2samp",
    "ks_statistic",
    "mean_std",
    "summarize",
]


# --------------------------------------------------------------------------- KS test


@dataclass(frozen=True)
class KSResult:
    """A two-sample Kolmogorov–Smirnov test: the statistic D and its asymptotic p-value."""

    statistic: float  # D = sup_x |F_a(x) - F_b(x)|, in [0, 1]
    pvalue: float  # P(K > sqrt(n m / (n + m)) D) under "same distribution", K ~ Kolmogorov


def _sample(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise UsageError(f"{name} must be a 1-D sample (got shape {array.shape}); flatten it")
    if array.size == 0:
        raise UsageError(f"{name} is empty; a KS test needs at least one value per sample")
    if not np.all(np.isfinite(array)):
        raise UsageError(f"{name} contains NaN or infinity; drop non-finite values first")
    return array


def ks_statistic(a: ArrayLike, b: ArrayLike) -> float:
    """The two-sample Kolmogorov–Smirnov statistic.

    .. math:: D = \\sup_x |F_a(x) - F_b(x)|

    with :math:`F_a, F_b` the empirical CDFs. The supremum is attained at a point of the
    pooled sample, where both CDFs are evaluated right-continuously (ties count fully).

    Args:
        a: the first sample, shape ``(n,)``.
        b: the second sample, shape ``(m,)``.

    Example:
        >>> ks_statistic([1.0, 3.0], [2.0, 4.0])
        0.5
    """
    a_sorted = np.sort(_sample(a, "first sample"))
    b_sorted = np.sort(_sample(b, "second sample"))
    pooled = np.concatenate([a_sorted, b_sorted])
    cdf_a = np.searchsorted(a_sorted, pooled, side="right") / a_sorted.size
    cdf_b = np.searchsorted(b_sorted, pooled, side="right") / b_sorted.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def kolmogorov_sf(x: float) -> float:
    """Survival function of the Kolmogorov distribution, :math:`Q(x) = P(K > x)`.

    :math:`K = \\sup_t |B(t)|` for a Brownian bridge :math:`B`; it is the limit law of
    :math:`\\sqrt{n m / (n + m)}\\, D` for two samples from one continuous distribution.
    Two equal series (Jacobi's theta identity); each is used where it converges fast:

    .. math::
        Q(x) = 2 \\sum_{k \\ge 1} (-1)^{k-1} e^{-2 k^2 x^2}
             = 1 - \\frac{\\sqrt{2\\pi}}{x} \\sum_{k \\ge 1} e^{-(2k-1)^2 \\pi^2 / (8 x^2)}

    The first (for ``x >= 1``) has no cancellation, so tiny tail probabilities keep their
    relative precision; the second (for ``x < 1``) is exact where the first converges slowly.

    Example:
        >>> round(kolmogorov_sf(1.3581), 4)  # the classic 5 % critical value
        0.05
    """
    x = float(x)
    if math.isnan(x):
        raise UsageError("kolmogorov_sf got NaN; pass a finite value")
    if x <= 0.0:
        return 1.0
    k = np.arange(1, 21, dtype=np.float64)
    if x < 1.0:
        cdf = math.sqrt(2.0 * math.pi) / x * np.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * x * x))
        return float(min(1.0, max(0.0, 1.0 - cdf.sum())))
    signs = np.where(k % 2 == 1, 1.0, -1.0)
    return float(min(1.0, max(0.0, 2.0 * np.sum(signs * np.exp(-2.0 * k * k * x * x)))))


def ks_2samp(a: ArrayLike, b: ArrayLike) -> KSResult:
    """Two-sample Kolmogorov–Smirnov test with Kolmogorov's asymptotic p-value.

    .. math:: p = Q\\left(\\sqrt{\\tfrac{n m}{n + m}}\\, D\\right)

    (:func:`kolmogorov_sf`). This is ``scipy.stats.kstwobign.sf`` at the same point; it is
    accurate for samples of a few hundred and more. With samples standardised by their own
    statistics the p-value is conservative (the null then ignores the fitted location and
    scale), so read it as a measure of the remaining difference, not as a calibrated test.

    Args:
        a: the first sample, shape ``(n,)``.
        b: the second sample, shape ``(m,)``.
    """
    a_arr = _sample(a, "first sample")
    b_arr = _sample(b, "second sample")
    statistic = ks_statistic(a_arr, b_arr)
    n, m = a_arr.size, b_arr.size
    return KSResult(statistic, kolmogorov_sf(math.sqrt(n * m / (n + m)) * statistic))


# --------------------------------------------------------------------- across seeds


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof=1) of ``n`` values, e.g. one per seed.

    With ``n == 1`` no spread was measured: ``std`` is 0.0 and formatting omits the ``±``.
    """

    mean: float
    std: float
    n: int

    def format(self, digits: int = 3, unit: str = "") -> str:
        """``"88.4 ± 0.3 %"``; see :func:`format_mean_std`."""
        return format_mean_std(self, digits=digits, unit=unit)


def summarize(values: ArrayLike) -> MeanStd:
    """Mean and sample standard deviation of a 1-D set of values (one per seed).

    .. math:: \\bar x = \\frac1n \\sum_i x_i, \\quad
              s = \\sqrt{\\frac{1}{n-1} \\sum_i (x_i - \\bar x)^2}

    Example:
        >>> summarize([1.0, 2.0, 3.0])
        MeanStd(mean=2.0, std=1.0, n=3)
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise UsageError("summarize got no values; pass at least one (one per seed)")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return MeanStd(float(array.mean()), std, int(array.size))


def mean_std(values: ArrayLike, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (ddof=1) along ``axis``, e.g. across seeds.

    Args:
        values: e.g. shape ``(seeds, epochs)``.
        axis: the axis to reduce (default 0, the seeds).

    Shape:
        ``(seeds, epochs)`` -> two arrays of shape ``(epochs,)``. With a single seed the
        std is all zeros (no spread measured).
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0 or array.shape[axis] == 0:
        raise UsageError(f"mean_std got no values along axis {axis} (shape {array.shape})")
    mean = array.mean(axis=axis)
    if array.shape[axis] == 1:
        return mean, np.zeros_like(mean)
    return mean, array.std(axis=axis, ddof=1)


# ----------------------------------------------------------------------- formatting

MISSING = "—"  # how a missing value (None) is shown in tables


def _strip_negative_zero(text: str) -> str:
    if text.startswith("-") and not any(c in "123456789" for c in text.split("e")[0]):
        return text[1:]
    return text


def format_number(value: object, digits: int = 4) -> str:
    """A number for a table: ``digits`` significant digits, fixed notation in
    ``[1e-4, 1e6)``, scientific outside; ints as they are; ``None`` as ``—``.

    Example:
        >>> [format_number(v) for v in (88.41234, 0.031234, 1.5e-7, 12345.6, 3, None)]
        ['88.41', '0.03123', '1.500e-07', '12346', '3', '—']
    """
    if value is None:
        return MISSING
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if not isinstance(value, float | np.floating):
        return str(value)
    if digits < 1:
        raise UsageError(f"digits must be >= 1 (got {digits})")
    x = float(value)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0.0:
        return "0"
    magnitude = abs(x)
    if magnitude >= 1e6 or magnitude < 1e-4:
        return f"{x:.{digits - 1}e}"
    exponent = math.floor(math.log10(magnitude))
    decimals = max(digits - 1 - exponent, 0)
    return _strip_negative_zero(f"{x:.{decimals}f}")


def format_fixed(value: float | None, decimals: int) -> str:
    """Fixed notation with ``decimals`` decimals, ``-0.000`` shown as ``0.000``."""
    if value is None:
        return MISSING
    return _strip_negative_zero(f"{float(value):.{decimals}f}")


def format_percent(fraction: float | None, decimals: int = 1) -> str:
    """A fraction as a percentage: ``format_percent(0.8843) == "88.4 %"``."""
    if fraction is None:
        return MISSING
    return f"{format_fixed(100.0 * float(fraction), decimals)} %"


def format_pvalue(p: float | None) -> str:
    """A p-value with 2 significant digits; one that underflowed to 0 is ``< 1e-300``."""
    if p is None:
        return MISSING
    p = float(p)
    if p == 0.0:
        return "< 1e-300"
    if p < 1e-3:
        return f"{p:.1e}"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def format_mean_std(summary: MeanStd, digits: int = 3, unit: str = "") -> str:
    """``"88.4 ± 0.3 %"``: the mean with ``digits`` significant digits, the std to the same
    decimal place; a single value (``n == 1``) has no ``±`` part."""
    suffix = f" {unit}" if unit else ""
    mean_text = format_number(summary.mean, digits)
    if summary.n < 2:
        return mean_text + suffix
    if "e" in mean_text or not math.isfinite(summary.mean):
        return f"{mean_text} ± {format_number(summary.std, 2)}{suffix}"
    decimals = len(mean_text.split(".")[1]) if "." in mean_text else 0
    return f"{mean_text} ± {format_fixed(summary.std, decimals)}{suffix}"


def format_duration(seconds: float | None) -> str:
    """``"2.3 s"``, ``"45 ms"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    if seconds is None:
        return MISSING
    s = float(seconds)
    if s < 1.0:
        return f"{s * 1000:.0f} ms"
    if s < 60.0:
        return f"{s:.1f} s"
    if s < 3600.0:
        minutes, rest = divmod(round(s), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(s), 3600)
    return f"{hours} h {rest // 60:02d} min"


def format_bytes(count: float | None) -> str:
    """Decimal units: ``format_bytes(1.23e9) == "1.23 GB"``."""
    if count is None:
        return MISSING
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000.0:
            return f"{value:.0f} B" if unit == "B" else f"{format_number(value, 3)} {unit}"
        value /= 1000.0
    return f"{format_number(value, 3)} TB"
