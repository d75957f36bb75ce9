"""What the experiments' figures share: compact PNGs and the arrays they plot.

Every figure is built by its experiment's :meth:`~normlab.lab.experiment.Experiment.figures`
with :mod:`normlab.report.plots` (normlab's style: across seeds every curve is the mean with
a ±1 std band). That module loads matplotlib, so experiments import it inside ``figures``.
Figures are small on purpose (about 100 dpi x 11 inches): they go into reports and the
README.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["compact_png", "finite_rows", "nan_mean_std", "percent"]


def compact_png(fig: Figure, dpi: int = 90) -> bytes:
    """The figure as a PNG with a 256-colour palette: about a third of the bytes of the
    full-colour file and indistinguishable for line plots (Pillow ships with matplotlib)."""
    import io

    from PIL import Image

    from normlab.report.plots import png_bytes

    image = Image.open(io.BytesIO(png_bytes(fig, dpi))).convert("RGB")
    buffer = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        buffer, format="PNG", optimize=True
    )
    return buffer.getvalue()


def percent(values: Any) -> np.ndarray:
    """Fractions as percentages, float64."""
    return 100.0 * np.asarray(values, dtype=np.float64)


def finite_rows(values: Sequence[Sequence[float | None]]) -> np.ndarray:
    """A 2-D array with NaN where a value is None (a seed that did not finish)."""
    return np.asarray(
        [[math.nan if v is None else v for v in row] for row in values], dtype=np.float64
    )


def nan_mean_std(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof=1; 0 for one value) over axis 0 ignoring NaN (diverged seeds);
    NaN where no seed is finite."""
    mean = np.full(runs.shape[1], np.nan)
    std = np.zeros(runs.shape[1])
    for j in range(runs.shape[1]):
        column = runs[:, j][np.isfinite(runs[:, j])]
        if column.size:
            mean[j] = column.mean()
            std[j] = column.std(ddof=1) if column.size > 1 else 0.0
    return mean, std
