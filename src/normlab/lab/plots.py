"""Figures of the lab's experiments: each takes an experiment's summary (the dict its
``run_*`` function returns) and returns a matplotlib ``Figure`` in normlab's style.

Across seeds every curve is the mean with a ±1 std band (:func:`normlab.report.plots.plot_lines`).
Figures are small on purpose (about 100 dpi x 11 inches): they go into reports and the
README.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from normlab.report.plots import PALETTE, new_figure, plot_lines, style

__all__ = [
    "batch_size_figure",
    "compact_png",
    "compare_figure",
    "experiment_figures",
    "lr_figure",
    "momentum_figure",
    "placement_figure",
    "probe_layers_figure",
    "probe_smoothness_figure",
]


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


def _label(norm: str) -> str:
    from normlab.lab.conclusions import label

    return label(norm)


def _percent(values: Any) -> np.ndarray:
    return 100.0 * np.asarray(values, dtype=np.float64)


def _finite_rows(values: Sequence[Sequence[float | None]]) -> np.ndarray:
    return np.asarray(
        [[math.nan if v is None else v for v in row] for row in values], dtype=np.float64
    )


def _nan_mean_std(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


# ================================================================================= compare
def compare_figure(summary: Mapping[str, Any]) -> Figure:
    """Four panels, one colour per norm: the final test accuracy (bars: mean, error bars:
    ±1 std, dots: seeds), test accuracy per epoch, the training loss along the steps
    (mean over seeds), and the seconds per epoch."""
    norms = summary["norms"]
    names = list(norms)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    with style():
        fig, axes = new_figure(nrows=2, ncols=2, width=13.0, height=8.5)
        final_ax, epoch_ax, loss_ax, time_ax = axes
        low = 100.0
        for i, norm in enumerate(names):
            values = [100 * v for v in norms[norm]["final_test_accuracy"]["values"]
                      if v is not None]  # fmt: skip
            if not values:
                continue
            low = min(low, *values)
            mean = float(np.mean(values))
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            final_ax.bar(i, mean, color=colors[i], alpha=0.85, width=0.7)
            if len(values) > 1:
                final_ax.errorbar(i, mean, yerr=std, color="black", capsize=4, lw=1.2)
            final_ax.scatter([i] * len(values), values, s=12, color="black", zorder=3)
        final_ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        final_ax.set_ylim(max(0.0, low - 10.0), 100)
        final_ax.set_ylabel("final test accuracy (%)")
        final_ax.set_title("Final test accuracy (dots: seeds)")
        final_ax.grid(axis="x", visible=False)

        acc_series = {}
        for norm in names:
            values = norms[norm]["per_epoch"]["test_accuracy"]["values"]
            if values:
                acc_series[_label(norm)] = _percent(values)
        if acc_series:
            length = min(v.shape[1] for v in acc_series.values())
            cut = {k: v[:, :length] for k, v in acc_series.items()}
            plot_lines(epoch_ax, np.arange(1, length + 1), cut, colors=colors)
            epoch_ax.legend(fontsize=8)
        epoch_ax.set_xlabel("epoch")
        epoch_ax.set_ylabel("test accuracy (%)")
        epoch_ax.set_title("Test accuracy per epoch (mean ± std)")

        for i, norm in enumerate(names):
            curves = [c for c in norms[norm]["loss_curves"] if c]
            if curves:
                length = min(len(c) for c in curves)
                xs = [p[0] for p in curves[0][:length]]
                ys = np.asarray([[p[1] for p in c[:length]] for c in curves])
                loss_ax.plot(xs, ys.mean(axis=0), color=colors[i], lw=1.5, label=_label(norm))
        loss_ax.set_xlabel("training step")
        loss_ax.set_ylabel("training loss (nats)")
        loss_ax.set_title("Training loss (mean over seeds)")
        loss_ax.legend(fontsize=8)

        seconds = [norms[n]["seconds_per_epoch"] for n in names]
        means = [s["mean"] if s["mean"] is not None else 0.0 for s in seconds]
        stds = [s["std"] or 0.0 for s in seconds]
        time_ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=4, alpha=0.85)
        time_ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        time_ax.set_ylabel("seconds per epoch")
        time_ax.set_title("Training time per epoch (this machine)")
        time_ax.grid(axis="x", visible=False)
    return fig


# ================================================================================ lr sweep
def lr_figure(summary: Mapping[str, Any]) -> Figure:
    """Final test accuracy against the learning rate (log scale); a cross marks a rate
    where some seed diverged, a dotted line the chance level."""
    with style():
        fig, (ax,) = new_figure(width=7.5, height=4.5)
        for index, (norm, points) in enumerate(summary["norms"].items()):
            color = PALETTE[index % len(PALETTE)]
            lrs = np.asarray([p["lr"] for p in points])
            runs = _finite_rows([p["test_accuracy"]["values"] for p in points]).T  # (seeds, lrs)
            mean, std = _nan_mean_std(100 * runs)
            ax.plot(lrs, mean, marker="o", color=color, label=_label(norm))
            ax.fill_between(lrs, mean - std, mean + std, color=color, alpha=0.2, lw=0)
            bad = [p["lr"] for p in points if p["diverged"]]
            if bad:
                ax.scatter(bad, [2.0] * len(bad), marker="x", s=60, color=color,
                           label=f"{_label(norm)}: diverged")  # fmt: skip
        if summary.get("chance") is not None:
            ax.axhline(100 * summary["chance"], color="grey", ls=":", lw=1.2, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Learning-rate sweep (mean ± std over seeds)")
        ax.legend(fontsize=9)
    return fig


# ============================================================================== batch size
def batch_size_figure(summary: Mapping[str, Any]) -> Figure:
    """Test accuracy against the batch size: in eval mode (running statistics, left) and
    with the statistics of test batches of that size (right)."""
    with style():
        fig, axes = new_figure(ncols=2, width=12.5, height=4.5)
        for key, ax, title in (
            ("eval_accuracy", axes[0], "Eval mode (running statistics)"),
            ("batch_stats_accuracy", axes[1], "Statistics of the test batch"),
        ):
            series = {}
            sizes = None
            for arm, points in summary["arms"].items():
                sizes = [p["batch_size"] for p in points]
                series[_label(arm)] = _percent(_finite_rows([p[key]["values"] for p in points]).T)
            if sizes:
                plot_lines(ax, sizes, series)
            ax.set_xscale("log", base=2)
            if sizes:
                ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.set_xlabel(f"images per batch ({summary.get('examples_seen')} examples seen)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(title)
            ax.legend(fontsize=9)
    return fig


# ================================================================================== probes
def probe_smoothness_figure(summary: Mapping[str, Any]) -> Figure:
    """Santurkar et al.'s three measures along the training steps, with and without
    batch norm (log scale); one row per activation."""
    keys = (
        ("loss_variation", "loss variation"),
        ("gradient_change", "gradient change (ℓ2)"),
        ("beta_smoothness", "effective β-smoothness"),
    )
    activations = summary["activations"]
    rows = max(len(activations), 1)
    with style():
        fig, axes = new_figure(nrows=rows, ncols=3, width=15.0, height=3.9 * rows)
        grid = axes.reshape(rows, 3)
        for r, (activation, group) in enumerate(activations.items()):
            for c, (key, title) in enumerate(keys):
                ax = grid[r, c]
                series, steps = {}, None
                for norm, s in group["norms"].items():
                    values = np.asarray(s["smoothness"][key]["values"], dtype=np.float64)
                    if values.size:
                        steps = s["steps"][: values.shape[1]]
                        series[_label(norm)] = np.where(values > 0, values, np.nan)
                if series and steps is not None:
                    plot_lines(ax, steps, series)
                    ax.legend(fontsize=8)
                ax.set_yscale("log")
                ax.set_title(f"{title} ({activation})")
                if r == rows - 1:
                    ax.set_xlabel("training step")
    return fig


def probe_layers_figure(summary: Mapping[str, Any], activation: str) -> Figure:
    """Per layer (columns), for one activation: the pre-activations' median with the
    15-85th percentile band (seed 0), their std, and the fraction of flat units
    (saturated sigmoid, zero ReLU), along the steps, with and without batch norm."""
    norms = summary["activations"][activation]["norms"]
    layer_names = next((list(s["layers"]) for s in norms.values() if s["layers"]), [])
    cols = max(len(layer_names), 1)
    flat = "saturated" if activation in ("sigmoid", "tanh") else "inactive"
    with style():
        fig, axes = new_figure(nrows=3, ncols=cols, width=3.6 * cols + 1, height=8.5)
        grid = axes.reshape(3, cols)
        for c, layer in enumerate(layer_names):
            for index, (norm, s) in enumerate(norms.items()):
                if layer not in s["layers"]:
                    continue
                stats = s["layers"][layer]
                color = PALETTE[index % len(PALETTE)]
                steps = s["steps"]
                pcts = np.asarray(stats["percentiles_seed0"], dtype=np.float64)
                n = min(len(steps), len(pcts))
                grid[0, c].plot(steps[:n], pcts[:n, 1], color=color, label=_label(norm))
                grid[0, c].fill_between(steps[:n], pcts[:n, 0], pcts[:n, 2], color=color,
                                        alpha=0.2, lw=0)  # fmt: skip
                std_values = np.asarray(stats["std"]["values"])
                flat_values = _percent(stats["saturation"]["values"])
                if std_values.size:
                    plot_lines(grid[1, c], steps[: std_values.shape[1]],
                               {_label(norm): std_values}, colors=[color])  # fmt: skip
                    plot_lines(grid[2, c], steps[: flat_values.shape[1]],
                               {_label(norm): flat_values}, colors=[color])  # fmt: skip
            grid[0, c].set_title(f"{layer} ({activation})")
            grid[2, c].set_xlabel("training step")
        if layer_names:
            grid[0, 0].set_ylabel("pre-activation\n15/50/85th pct")
            grid[1, 0].set_ylabel("pre-activation std")
            grid[2, 0].set_ylabel(f"{flat} units (%)")
            grid[0, 0].legend(fontsize=8)
    return fig


# =============================================================================== placement
def placement_figure(summary: Mapping[str, Any]) -> Figure:
    """Final test accuracy with the norm before and after each activation: bars are the
    mean, error bars ±1 std, dots the seeds."""
    rows = summary["rows"]
    activations = list(dict.fromkeys(r["activation"] for r in rows))
    placements = list(dict.fromkeys(r["placement"] for r in rows))
    width = 0.8 / max(len(placements), 1)
    with style():
        fig, (ax,) = new_figure(width=7.0, height=4.3)
        low = 100.0
        for j, placement in enumerate(placements):
            for i, activation in enumerate(activations):
                row = next(
                    r for r in rows if r["activation"] == activation and r["placement"] == placement
                )
                values = [v for v in row["test_accuracy"]["values"] if v is not None]
                if not values:
                    continue
                x = i + (j - (len(placements) - 1) / 2) * width
                mean = 100 * float(np.mean(values))
                std = 100 * float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                low = min(low, *(100 * v for v in values))
                ax.bar(x, mean, width=width * 0.9, color=PALETTE[j % len(PALETTE)], alpha=0.85,
                       label=f"norm {placement} the activation" if i == 0 else None)  # fmt: skip
                if len(values) > 1:
                    ax.errorbar(x, mean, yerr=std, color="black", capsize=4, lw=1.2)
                ax.scatter([x] * len(values), _percent(values), s=12, color="black", zorder=3)
        ax.set_xticks(range(len(activations)), activations)
        ax.set_ylim(max(0.0, low - 5.0), 100)
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title("Norm before or after the activation")
        ax.grid(axis="x", visible=False)
        ax.legend(fontsize=9)
    return fig


# ================================================================================ momentum
def momentum_figure(summary: Mapping[str, Any]) -> Figure:
    """Test accuracy along the first steps in eval mode (solid) and with batch statistics
    (dashed) for each batch-norm momentum (left); their gap (right)."""
    with style():
        fig, axes = new_figure(ncols=2, width=12.5, height=4.5)
        for index, item in enumerate(summary["momenta"]):
            color = PALETTE[index % len(PALETTE)]
            steps = np.asarray(item["steps"], dtype=np.float64)
            x = np.maximum(steps, 0.5)  # step 0 on a log axis
            n = len(item["eval_accuracy"]["mean"])
            axes[0].plot(x[:n], _percent(item["eval_accuracy"]["mean"]), color=color,
                         marker="o", ms=3, label=f"m={item['momentum']:g} eval mode")  # fmt: skip
            axes[0].plot(x[:n], _percent(item["batch_stats_accuracy"]["mean"]), color=color,
                         ls="--", label=f"m={item['momentum']:g} batch stats")  # fmt: skip
            gap = np.asarray(item["gap"]["values"], dtype=np.float64)
            if gap.size:
                plot_lines(axes[1], x[: gap.shape[1]], {f"m={item['momentum']:g}": 100 * gap},
                           colors=[color])  # fmt: skip
            forget = item["steps_to_forget"]
            if 0 < forget <= steps.max() * 1.5:
                axes[1].axvline(forget, color=color, ls=":", lw=1.2)
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("training step (log scale; step 0 at 0.5)")
        axes[0].set_ylabel("test accuracy (%)")
        axes[0].set_title("Eval mode lags batch statistics")
        axes[0].legend(fontsize=7, ncol=2)
        axes[1].axhline(0, color="grey", lw=1)
        axes[1].set_ylabel("batch-stats minus eval-mode accuracy (points)")
        axes[1].set_title("The gap (dotted: closed-form t₉₅)")
        axes[1].legend(fontsize=9)
    return fig


def experiment_figures(name: str, summary: Mapping[str, Any]) -> list[tuple[str, Figure, str]]:
    """``[(file_stem, figure, caption), ...]`` for one experiment's summary."""
    if name == "compare":
        return [("compare", compare_figure(summary),
                 "Every normalization on the same LeNet: test accuracy per epoch, training "
                 "loss, and the time per epoch.")]  # fmt: skip
    if name == "sweep-lr":
        return [("sweep-lr", lr_figure(summary),
                 "Final test accuracy over a log grid of learning rates, with and without "
                 "batch norm (crosses: a seed diverged).")]  # fmt: skip
    if name == "sweep-batch-size":
        caption = (
            "Accuracy against the batch size at a fixed number of examples seen, with "
            "running statistics (eval mode) and with the test batch's own statistics."
        )
        return [("sweep-batch-size", batch_size_figure(summary), caption)]
    if name == "probe":
        figures = [
            ("probe-smoothness", probe_smoothness_figure(summary),
             "Loss-landscape smoothness along the trajectory (Santurkar et al. 2018): "
             "lower is smoother."),
        ]  # fmt: skip
        for activation in summary["activations"]:
            caption = (
                f"Pre-activations of each layer during training ({activation}): percentiles "
                "(seed 0), standard deviation and the fraction of flat units."
            )
            figures.append(
                (f"probe-layers-{activation}", probe_layers_figure(summary, activation), caption)
            )
        return figures
    if name == "placement":
        return [("placement", placement_figure(summary),
                 "Final test accuracy with the norm before or after the activation.")]  # fmt: skip
    if name == "momentum":
        return [("momentum", momentum_figure(summary),
                 "Early training: eval-mode accuracy against batch-statistics accuracy for "
                 "several batch-norm momenta.")]  # fmt: skip
    raise ValueError(f"unknown experiment {name!r}")
