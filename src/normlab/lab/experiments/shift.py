"""The tutorial's covariate-shift demo, and what standardisation does to it.

The tutorial draws a training feature from N(0, 1) and a test feature from N(2, 1.5²):
the test inputs live somewhere the model never saw. Standardising each sample by its
*own* mean and standard deviation,

.. math:: \\hat x_i = \\frac{x_i - \\bar x}{s}, \\qquad
          \\bar x = \\frac1n \\sum_i x_i, \\quad s = \\sqrt{\\frac1n \\sum_i (x_i - \\bar x)^2},

is what batch normalization does to each feature of each batch. It removes any difference
in location and scale — the two-sample Kolmogorov–Smirnov distance drops to sampling
noise — but nothing else: samples that differ in shape (skew, tails, modes) still differ
after standardisation. ``test_shape="skewed"`` shows that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from normlab.errors import UsageError
from normlab.report.stats import KSResult, format_fixed, format_pvalue, ks_2samp

__all__ = [
    "SHAPES",
    "Moments",
    "ShiftResult",
    "conclusion",
    "covariate_shift",
    "standardize",
    "summary_rows",
]

Shape = Literal["normal", "skewed"]
SHAPES: tuple[str, ...] = ("normal", "skewed")  # skewed: a shifted exponential, skewness 2
MAX_SAMPLES = 10_000_000  # 80 MB per array; more makes the demo slow, not clearer


@dataclass(frozen=True)
class Moments:
    """Sample mean and standard deviation (ddof=0, the normalising statistics)."""

    mean: float
    std: float

    @classmethod
    def of(cls, sample: np.ndarray) -> Moments:
        return cls(float(sample.mean()), float(sample.std()))


@dataclass(frozen=True)
class ShiftResult:
    """Everything the covariate-shift demo measured.

    Shape:
        ``train``, ``train_standardized``: ``(num_samples,)``; the same for ``test``.
    """

    train: np.ndarray  # drawn from N(train_params)
    test: np.ndarray  # drawn from test_params with test_shape
    train_standardized: np.ndarray  # train standardised by its own mean and std
    test_standardized: np.ndarray  # test standardised by its own mean and std
    train_params: tuple[float, float]  # the (mean, std) the train sample was drawn with
    test_params: tuple[float, float]  # the (mean, std) the test sample was drawn with
    test_shape: str  # "normal" or "skewed"
    seed: int
    train_before: Moments
    test_before: Moments
    train_after: Moments
    test_after: Moments
    ks_before: KSResult  # train vs test
    ks_after: KSResult  # train_standardized vs test_standardized

    @property
    def num_samples(self) -> int:
        return int(self.train.size)


def standardize(sample: np.ndarray) -> np.ndarray:
    """``(x - mean(x)) / std(x)`` with the sample's own statistics (ddof=0).

    Shape:
        ``(n,)`` -> ``(n,)``; the result has mean 0 and std 1 up to rounding.
    """
    std = float(sample.std())
    if not std > 0.0:
        raise UsageError("cannot standardise a constant sample (std 0); draw more values")
    return (sample - sample.mean()) / std


def _check_params(name: str, params: tuple[float, float]) -> tuple[float, float]:
    try:
        mean, std = (float(v) for v in params)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a (mean, std) pair of numbers (got {params!r})") from None
    if not math.isfinite(mean):
        raise UsageError(f"{name} mean must be finite (got {mean})")
    if not (math.isfinite(std) and std > 0.0):
        raise UsageError(f"{name} std must be a finite number > 0 (got {std})")
    return mean, std


def _draw(rng: np.random.Generator, mean: float, std: float, n: int, shape: str) -> np.ndarray:
    if shape == "normal":
        return rng.normal(mean, std, n)
    # Exp(1) has mean 1, std 1 and skewness 2: mean + std * (E - 1) has the asked mean/std.
    return mean + std * (rng.exponential(1.0, n) - 1.0)


def covariate_shift(
    num_samples: int = 1000,
    train: tuple[float, float] = (0.0, 1.0),
    test: tuple[float, float] = (2.0, 1.5),
    seed: int = 0,
    test_shape: Shape = "normal",
) -> ShiftResult:
    """Draw a train and a test feature with different distributions, standardise each by
    its own statistics, and measure both pairs.

    Args:
        num_samples: values per sample (>= 2). Default: 1000, as the tutorial.
        train: ``(mean, std)`` of the training feature. Default: ``(0, 1)``.
        test: ``(mean, std)`` of the test feature. Default: ``(2, 1.5)``.
        seed: seeds one ``numpy.random.Generator``; train is drawn first, then test.
        test_shape: ``"normal"`` (the tutorial) or ``"skewed"`` (a shifted exponential
            with the same mean and std: standardisation cannot remove that difference).

    Example:
        >>> result = covariate_shift(seed=0)
        >>> result.ks_after.statistic < result.ks_before.statistic
        True
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise UsageError(f"num_samples must be an integer (got {num_samples!r})")
    if not 2 <= num_samples <= MAX_SAMPLES:
        raise UsageError(f"num_samples must be between 2 and {MAX_SAMPLES} (got {num_samples})")
    if test_shape not in SHAPES:
        raise UsageError(f"unknown test_shape {test_shape!r}; valid: {', '.join(SHAPES)}")
    train_mean, train_std = _check_params("train", train)
    test_mean, test_std = _check_params("test", test)

    rng = np.random.default_rng(seed)
    train_sample = _draw(rng, train_mean, train_std, int(num_samples), "normal")
    test_sample = _draw(rng, test_mean, test_std, int(num_samples), test_shape)
    train_hat, test_hat = standardize(train_sample), standardize(test_sample)
    return ShiftResult(
        train=train_sample,
        test=test_sample,
        train_standardized=train_hat,
        test_standardized=test_hat,
        train_params=(train_mean, train_std),
        test_params=(test_mean, test_std),
        test_shape=test_shape,
        seed=int(seed),
        train_before=Moments.of(train_sample),
        test_before=Moments.of(test_sample),
        train_after=Moments.of(train_hat),
        test_after=Moments.of(test_hat),
        ks_before=ks_2samp(train_sample, test_sample),
        ks_after=ks_2samp(train_hat, test_hat),
    )


def summary_rows(result: ShiftResult) -> list[dict[str, object]]:
    """The numbers as table rows (one per stage): ``stage``, ``train_mean``, ``train_std``,
    ``test_mean``, ``test_std``, ``ks``, ``p``. Formatting is the caller's."""
    stages = (
        ("before", result.train_before, result.test_before, result.ks_before),
        ("after standardising", result.train_after, result.test_after, result.ks_after),
    )
    return [
        {
            "stage": stage,
            "train_mean": train.mean,
            "train_std": train.std,
            "test_mean": test.mean,
            "test_std": test.std,
            "ks": ks.statistic,
            "p": ks.pvalue,
        }
        for stage, train, test, ks in stages
    ]


def conclusion(result: ShiftResult) -> str:
    """One sentence computed from the numbers: what standardisation removed, and what not."""
    before, after = result.ks_before, result.ks_after
    test_before, test_after = result.test_before, result.test_after
    text = (
        f"Standardising each sample by its own mean and std moved the test mean from "
        f"{format_fixed(test_before.mean, 2)} to {format_fixed(test_after.mean, 2)} and its std "
        f"from {test_before.std:.2f} to {test_after.std:.2f}; the KS distance fell "
        f"from {before.statistic:.3f} to {after.statistic:.3f}."
    )
    if after.pvalue >= 0.05:
        return text + (
            f" What is left is sampling noise (p = {format_pvalue(after.pvalue)}): a shift in "
            "location and scale is all that separated them."
        )
    return text + (
        f" A difference remains (p = {format_pvalue(after.pvalue)}): standardisation "
        "removes location and scale, not shape."
    )
