"""Figures: functions that take data and return a matplotlib ``Figure``.

All figures share one style (:data:`STYLE`): readable fonts, light grid, no top/right
spines, and the Okabe–Ito colour-blind-safe palette (:data:`PALETTE`). Figures are built
with ``matplotlib.figure.Figure`` on the Agg canvas, never through ``pyplot``: no global
state, no window, nothing kept alive after the caller drops the figure, and a notebook's
own backend is left alone. Several seeds are drawn as their mean with a ±1 std band.

To compose a new figure in the same style::

    with style():
        fig, axes = new_figure(ncols=2)
        plot_lines(axes[0], epochs, {"batch": loss_per_seed})  # (seeds, epochs)
    save_png(fig, run_dir / "loss.png")
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from normlab.errors import UsageError
from normlab.report.document import FIGURE_DPI
from normlab.report.stats import format_fixed, format_pvalue, mean_std
from normlab.train.atomic import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from normlab.lab.experiments.shift import ShiftResult

__all__ = [
    "PALETTE",
    "STYLE",
    "bar_figure",
    "line_figure",
    "new_figure",
    "plot_lines",
    "png_bytes",
    "save_png",
    "shift_figure",
    "style",
]

# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow (last: weak on white)
    "#000000",  # black
)

STYLE: dict[str, object] = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "legend.frameon": False,
    "lines.linewidth": 2.0,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}

BAND_ALPHA = 0.2  # the ±1 std band across seeds


@contextmanager
def style() -> Iterator[None]:
    """Draw in normlab's style (``matplotlib.rc_context(STYLE)``). Artists read the
    settings when they are created, so build the whole figure inside the block."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(
    nrows: int = 1, ncols: int = 1, *, width: float | None = None, height: float | None = None
) -> tuple[Figure, np.ndarray]:
    """A figure on the Agg canvas, with a grid of ``nrows x ncols`` axes.

    Call it inside :func:`style`. Default size: 5.5 x 4 inches per panel.

    Returns:
        ``(figure, axes)`` with ``axes`` a 1-D array of ``nrows * ncols`` Axes, row by row.
    """
    fig = Figure(
        figsize=(width or 5.5 * ncols, height or 4.0 * nrows), layout="constrained", dpi=100
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.reshape(-1)


def png_bytes(fig: Figure, dpi: int = FIGURE_DPI) -> bytes:
    """The figure as a PNG file's bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = FIGURE_DPI) -> Path:
    """Write the figure as a PNG (atomically, creating directories); returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"figure path {path} must end in .png")
    return write_bytes_atomic(path, png_bytes(fig, dpi))


def _as_seeds(values: ArrayLike, length: int, label: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != length:
        raise UsageError(
            f"series {label!r} has shape {np.shape(values)}; expected ({length},) or "
            f"(seeds, {length}) to match x"
        )
    return array


def plot_lines(
    ax: Axes,
    x: ArrayLike,
    series: Mapping[str, ArrayLike],
    *,
    markers: bool = True,
    colors: Sequence[str] = PALETTE,
) -> None:
    """Draw one line per series on ``ax``: the mean across seeds, and a ±1 std band
    (sample std) when there are two seeds or more.

    Args:
        ax: the axes to draw on.
        x: shape ``(T,)``, e.g. epochs or learning rates.
        series: label -> values of shape ``(T,)`` or ``(seeds, T)``.
        markers: draw a marker at each point (default), useful for a few points.
        colors: the colour cycle (default: :data:`PALETTE`).
    """
    xs = np.asarray(x, dtype=np.float64).reshape(-1)
    if not series:
        raise UsageError("plot_lines got no series; pass at least one label -> values")
    for index, (label, values) in enumerate(series.items()):
        runs = _as_seeds(values, xs.size, label)
        mean, std = mean_std(runs, axis=0)
        color = colors[index % len(colors)]
        name = f"{label} (mean ± std, {runs.shape[0]} seeds)" if runs.shape[0] > 1 else label
        ax.plot(xs, mean, color=color, label=name, marker="o" if markers else None, ms=4)
        if runs.shape[0] > 1:
            ax.fill_between(xs, mean - std, mean + std, color=color, alpha=BAND_ALPHA, lw=0)


def line_figure(
    x: ArrayLike,
    series: Mapping[str, ArrayLike],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    markers: bool = True,
) -> Figure:
    """Curves across seeds: mean lines with ±1 std bands (see :func:`plot_lines`).

    Example:
        >>> fig = line_figure([1, 2, 3], {"batch": [[0.9, 0.5, 0.3], [1.0, 0.6, 0.3]]},
        ...                   xlabel="epoch", ylabel="train loss (nats)")
    """
    with style():
        fig, (ax,) = new_figure(width=7.0, height=4.2)
        plot_lines(ax, x, series, markers=markers)
        xs = np.asarray(x, dtype=np.float64)
        if not logx and np.all(xs == np.round(xs)):  # epochs, steps: integer ticks only
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.legend()
    return fig


def bar_figure(
    groups: Mapping[str, ArrayLike],
    *,
    ylabel: str,
    title: str | None = None,
    xlabel: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """One bar per group: the mean across seeds, a ±1 std error bar, and a dot per seed.

    Args:
        groups: label -> values, one per seed (shape ``(seeds,)``).
        ylabel: the quantity and its unit, e.g. ``"test accuracy (%)"``.
        title, xlabel: optional.
        ylim: optional y range (bars of accuracies near 90 % read better from 80 %).
    """
    if not groups:
        raise UsageError("bar_figure got no groups; pass at least one label -> values")
    with style():
        fig, (ax,) = new_figure(width=max(4.5, 1.1 * len(groups) + 2.0), height=4.2)
        rng = np.random.default_rng(0)  # horizontal jitter of the seed dots only
        for index, (label, values) in enumerate(groups.items()):
            runs = np.asarray(values, dtype=np.float64).reshape(-1)
            if runs.size == 0:
                raise UsageError(f"group {label!r} has no values")
            mean, std = mean_std(runs)
            color = PALETTE[index % len(PALETTE)]
            ax.bar(index, float(mean), color=color, alpha=0.85, width=0.7)
            if runs.size > 1:
                ax.errorbar(index, float(mean), yerr=float(std), color="black", capsize=5, lw=1.5)
                jitter = rng.uniform(-0.15, 0.15, runs.size)
                ax.scatter(index + jitter, runs, s=14, color="black", zorder=3, alpha=0.7)
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        if xlabel:
            ax.set_xlabel(xlabel)
        if title:
            ax.set_title(title)
        if ylim is not None:
            ax.set_ylim(*ylim)
    return fig


# -------------------------------------------------------------------- covariate shift


def _density(shape: str, mean: float, std: float, xs: np.ndarray) -> np.ndarray:
    """The density a sample was drawn from (see :mod:`normlab.lab.experiments.shift`)."""
    if shape == "normal":
        return np.exp(-0.5 * ((xs - mean) / std) ** 2) / (std * math.sqrt(2.0 * math.pi))
    z = (xs - mean) / std + 1.0  # mean + std * (E - 1), E ~ Exp(1)
    return np.where(z >= 0.0, np.exp(-np.clip(z, 0.0, None)) / std, 0.0)


def shift_figure(result: ShiftResult, bins: int = 40) -> Figure:
    """The covariate-shift demo in two panels: the raw train and test samples (the
    tutorial's figure), and the same samples each standardised by its own mean and std.
    Dashed curves: the densities the samples were drawn from (after standardisation:
    the same densities, moved and rescaled)."""
    train_mean, train_std = result.train_params
    test_mean, test_std = result.test_params
    shape = result.test_shape
    b_train, b_test = result.train_before, result.test_before
    panels = (
        (
            "Before: raw samples",
            "feature value (units of the data)",
            result.train,
            result.test,
            (("normal", train_mean, train_std), (shape, test_mean, test_std)),
            result.ks_before,
            (result.train_before, result.test_before),
        ),
        (
            "After: each standardised by its own mean and std",
            "standardised value (units of each sample's std)",
            result.train_standardized,
            result.test_standardized,
            (
                ("normal", (train_mean - b_train.mean) / b_train.std, train_std / b_train.std),
                (shape, (test_mean - b_test.mean) / b_test.std, test_std / b_test.std),
            ),
            result.ks_after,
            (result.train_after, result.test_after),
        ),
    )
    with style():
        fig, axes = new_figure(ncols=2, width=12.0, height=4.6)
        for ax, (title, xlabel, train, test, truths, ks, moments) in zip(axes, panels, strict=True):
            edges = np.histogram_bin_edges(np.concatenate([train, test]), bins=bins)
            xs = np.linspace(edges[0], edges[-1], 400)
            for sample, name, color, truth, m in zip(
                (train, test), ("train", "test"), PALETTE[:2], truths, moments, strict=True
            ):
                label = f"{name}: mean {format_fixed(m.mean, 2)}, std {m.std:.2f}"
                ax.hist(sample, bins=edges, density=True, alpha=0.5, color=color, label=label)
                ax.plot(xs, _density(*truth, xs), color=color, lw=1.5, ls="--")
            ax.set_title(f"{title}\nKS D = {ks.statistic:.3f}, p = {format_pvalue(ks.pvalue)}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("density (1 / unit of x)")
            ax.set_ylim(0.0, ax.get_ylim()[1] * 1.2)  # room for the legend
            ax.legend(loc="upper right")
        n = result.num_samples
        fig.suptitle(f"Covariate shift: {n} train values vs {n} test values (seed {result.seed})")
    return fig
