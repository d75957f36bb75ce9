"""Figures: what they draw is the data they were given, in the shared style."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from normlab.errors import UsageError
from normlab.lab.experiments.shift import covariate_shift
from normlab.report.plots import (
    PALETTE,
    bar_figure,
    line_figure,
    png_bytes,
    save_png,
    shift_figure,
)


def test_line_figure_draws_mean_and_std_band() -> None:
    runs = np.array([[1.0, 0.6, 0.4], [0.8, 0.4, 0.2], [1.2, 0.8, 0.3]])  # (seeds, epochs)
    fig = line_figure(
        [1, 2, 3], {"batch": runs, "none": [1.5, 1.2, 1.0]}, xlabel="epoch", ylabel="loss (nats)"
    )
    (ax,) = fig.axes
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), runs.mean(axis=0))
    np.testing.assert_allclose(lines[1].get_ydata(), [1.5, 1.2, 1.0])
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # only the series with several seeds has a band
    top = bands[0].get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx((runs.mean(axis=0) + runs.std(axis=0, ddof=1)).max())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["batch (mean ± std, 3 seeds)", "none"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "loss (nats)")
    assert lines[0].get_color().lower() == PALETTE[0].lower()


def test_line_figure_rejects_mismatched_series() -> None:
    with pytest.raises(UsageError, match=r"expected \(3,\) or \(seeds, 3\)"):
        line_figure([1, 2, 3], {"x": [[1.0, 2.0]]}, xlabel="e", ylabel="y")


def test_bar_figure_bars_are_means_with_std_error_bars() -> None:
    groups = {"batch": [88.0, 88.4, 88.2], "group": [86.0, 87.0], "one seed": [80.0]}
    fig = bar_figure(groups, ylabel="test accuracy (%)", ylim=(75, 90))
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [88.2, 86.5, 80.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(groups)
    assert ax.get_ylim() == (75, 90) and ax.get_ylabel() == "test accuracy (%)"
    dots = [c for c in ax.collections if c.get_offsets().shape[0] in (2, 3)]
    assert sum(c.get_offsets().shape[0] for c in dots) == 5  # one dot per seed


def test_shift_figure_has_before_and_after_panels(tmp_path: Path, check_png) -> None:
    result = covariate_shift(num_samples=300, seed=2)
    fig = shift_figure(result, bins=20)
    assert isinstance(fig, Figure)
    before, after = fig.axes
    assert "Before" in before.get_title() and "After" in after.get_title()
    assert f"{result.ks_before.statistic:.3f}" in before.get_title()
    assert f"{result.ks_after.statistic:.3f}" in after.get_title()
    for ax in (before, after):
        assert ax.get_xlabel() and ax.get_ylabel().startswith("density")
        assert len(ax.get_legend().get_texts()) == 2
        # two overlaid density histograms of 20 bars: each integrates to 1
        bars = ax.patches
        assert len(bars) == 40
        for half in (bars[:20], bars[20:]):
            area = sum(b.get_width() * b.get_height() for b in half)
            assert area == pytest.approx(1.0, rel=1e-9)
    path = save_png(fig, tmp_path / "a" / "shift.png")
    width, height = check_png(path.read_bytes())
    assert width > 2 * height  # two panels side by side


def test_png_bytes_and_save_png_errors(tmp_path: Path, check_png) -> None:
    fig = line_figure([1, 2], {"a": [1.0, 2.0]}, xlabel="x", ylabel="y")
    check_png(png_bytes(fig))
    with pytest.raises(UsageError, match=r"must end in \.png"):
        save_png(fig, tmp_path / "plot.jpg")
