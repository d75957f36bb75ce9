"""The tutorial's report: figures and tables from a :class:`TutorialResult`.

:func:`tutorial_figures` draws the figures (data in, matplotlib figures out) and
:func:`build_report` lays out the document; ``normlab tutorial`` writes it as
``report.html`` (self-contained) and ``report.md`` in the run directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from normlab.lab.experiments.shift import conclusion as shift_conclusion
from normlab.lab.experiments.shift import summary_rows as shift_rows
from normlab.lab.params import params_figure, params_rows
from normlab.report import Column, Report
from normlab.report.columns import SHIFT_COLUMNS, TUTORIAL_COLUMNS
from normlab.tutorial.pipeline import (
    REFERENCE_PAIR,
    TutorialResult,
    conclusions,
    summary_rows,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SMOOTHING = 50  # steps in the moving average of the per-step loss curves

PARAM_COLUMNS = [
    Column("layer"),
    Column("type"),
    Column("channels"),
    *(Column(key, fmt=".3f") for key in ("mean", "std", "min", "max")),
]


def moving_average(values: list[float], window: int) -> np.ndarray:
    """The mean of each run of ``window`` consecutive values (shape ``(len - window + 1,)``);
    the values themselves when there are fewer than ``window``."""
    array = np.asarray(values, dtype=np.float64)
    if array.size < window or window <= 1:
        return array
    cumulative = np.cumsum(np.insert(array, 0, 0.0))
    return (cumulative[window:] - cumulative[:-window]) / window


def epoch_curves_figure(result: TutorialResult) -> Figure:
    """Per-epoch training loss (left) and test accuracy (right) of every arm."""
    from normlab.report.plots import new_figure, plot_lines, style

    with style():
        fig, (loss_ax, acc_ax) = new_figure(1, 2, width=11, height=4.2)
        for ax, key, ylabel, scale in (
            (loss_ax, "train_loss", "training loss (cross-entropy)", 1.0),
            (acc_ax, "test_accuracy", "test accuracy (%)", 100.0),
        ):
            series = {}
            for arm in result.arms:
                values = [scale * getattr(e, key) for e in arm.history.epochs]
                if values:
                    series[arm.label] = values
            epochs = np.arange(1, max(len(v) for v in series.values()) + 1)
            plot_lines(ax, epochs, {k: v for k, v in series.items() if len(v) == len(epochs)})
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_xticks(epochs)
            ax.legend()
    return fig


def step_loss_figure(result: TutorialResult) -> Figure | None:
    """normlab's and torch.nn's batch norm, step by step: both loss curves (moving average of
    :data:`SMOOTHING` steps) and their absolute difference at every step (log scale)."""
    from normlab.report.plots import PALETTE, new_figure, style

    ours, theirs = (result.arm(n) for n in REFERENCE_PAIR)
    if ours is None or theirs is None:
        return None
    a, b = ours.history.step_losses, theirs.history.step_losses
    count = min(len(a), len(b))
    with style():
        fig, (curve_ax, gap_ax) = new_figure(1, 2, width=11, height=4.0)
        for index, (arm, values) in enumerate(((ours, a), (theirs, b))):
            smooth = moving_average(values[:count], SMOOTHING)
            steps = np.arange(smooth.size) + min(SMOOTHING, count) // 2
            style_kw = {"linestyle": "--"} if index else {}
            curve_ax.plot(steps, smooth, color=PALETTE[index], label=arm.label, **style_kw)
        curve_ax.set_xlabel("training step")
        curve_ax.set_ylabel(f"training loss ({SMOOTHING}-step mean)")
        curve_ax.legend()
        gap = np.abs(np.asarray(a[:count]) - np.asarray(b[:count]))
        nonzero = gap > 0
        steps = np.arange(count)
        if nonzero.any():
            gap_ax.plot(steps[nonzero], gap[nonzero], ".", color=PALETTE[2], ms=2)
            gap_ax.set_yscale("log")
        gap_ax.set_title(f"bit-identical at {count - int(nonzero.sum())} of {count} steps")
        gap_ax.set_xlabel("training step")
        gap_ax.set_ylabel("|loss(normlab) - loss(torch.nn)|")
    return fig


def _code_sentence(code: str, device: str) -> str:
    """Which normlab code trained the arm, in words."""
    if code != "kernels":
        return "normlab ran its tensor code (normlab.functional)."
    if str(device).startswith("cuda"):
        return "normlab ran its Triton kernels (normlab.kernels.triton)."
    return "normlab ran its fused CPU kernels (normlab.kernels)."


def build_report(result: TutorialResult, command: str = "normlab tutorial") -> Report:
    """The tutorial's report: covariate shift, training table and curves, normlab against
    torch.nn step by step, learned gamma/beta, conclusions computed from the data."""
    from normlab.report.plots import shift_figure

    config = result.config
    subset = ""
    if config.train_subset or config.test_subset:
        subset = f", subsets {config.train_subset or 'all'}/{config.test_subset or 'all'}"
    report = Report(
        "normlab: the batch-normalization tutorial, end to end",
        subtitle=(
            f"LeNet on {config.dataset}{subset}: SGD lr {config.lr}, momentum {config.momentum}, "
            f"batch {config.batch_size}, {config.epochs} epochs, seed {config.seed}, "
            f"device {config.device}"
        ),
    )
    report.paragraph(
        "The course tutorial asks why, where and when batch normalization helps. This report "
        "re-runs it with normlab: the covariate-shift demo, then the tutorial's LeNet trained "
        "with normlab's batch norm (written from scratch), with torch.nn's, and without "
        "normalization, from the same initial weights on the same batches. "
        + _code_sentence(result.code, config.device)
    )
    report.section("Findings").bullets(conclusions(result))

    shift = result.shift
    report.section("Covariate shift")
    report.paragraph(
        f"A train feature drawn from N({shift.train_params[0]:g}, {shift.train_params[1]:g}²) "
        f"and a test feature from N({shift.test_params[0]:g}, {shift.test_params[1]:g}²), "
        f"{shift.num_samples} values each: the test data is shifted and wider than what the "
        "model was trained on. Standardising each by its own mean and std, as a normalization "
        "layer does with its activations, removes the difference in location and scale."
    )
    report.figure(shift_figure(shift), "Train and test features, raw and standardised.", "shift")
    report.table(
        shift_rows(shift),
        SHIFT_COLUMNS,
        caption="Means, standard deviations and the two-sample Kolmogorov-Smirnov test.",
    )
    report.paragraph(shift_conclusion(shift))

    report.section("Training LeNet with and without batch norm")
    report.table(
        summary_rows(result),
        TUTORIAL_COLUMNS,
        caption=(
            "After the last epoch. s / epoch counts training only; peak memory is the "
            "peak resident memory of the processes that trained the arm."
            + (
                " The arms trained in pieces of half an epoch, "
                f"{result.workers} at a time in separate processes: every arm shared the "
                "machine alike."
                if result.workers > 1
                else ""
            )
        ),
    )
    report.figure(
        epoch_curves_figure(result),
        "Training loss and test accuracy after each epoch.",
        "epoch-curves",
    )
    step_figure = step_loss_figure(result)
    if step_figure is not None:
        report.subsection("normlab against torch.nn, step by step")
        report.paragraph(
            "Both arms start from the same weights and see the same batches in the same "
            "order, so any difference between their losses comes from floating-point "
            "rounding in the two batch-norm implementations."
        )
        report.figure(step_figure, "Per-step training loss of the two batch norms.", "step-loss")

    report.section("Learned gamma and beta")
    report.paragraph(
        "Each batch-norm layer computes y = gamma * x_hat + beta per channel, starting from "
        "gamma = 1 and beta = 0. How far training moves them shows how much of the "
        "normalization the network chose to undo or re-scale."
    )
    learned = [arm for arm in result.arms if arm.params]
    if learned:
        arm = learned[0]
        others = ", ".join(a.label for a in learned[1:])
        if others:
            report.paragraph(f"Shown for {arm.label}; {others}: see the findings above.")
        for which in ("gamma", "beta"):
            report.table(params_rows(arm.params, which), PARAM_COLUMNS, caption=f"{which}")
        report.figure(
            params_figure(arm.params), f"gamma and beta per channel: {arm.label}.", "params"
        )
    else:
        report.paragraph("No arm has a normalization layer with learned parameters.")
    report.section("Reproduce").code(command)
    return report
