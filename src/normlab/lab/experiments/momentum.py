"""Momentum and the running statistics: how far eval mode lags early in training.

In eval mode batch norm normalises with running averages instead of the batch's own
statistics. They start at mean 0 and variance 1 and follow the batch statistics as an
exponential moving average with momentum ``m`` (torch's convention: the weight of the
new batch),

.. math:: \\hat\\mu_t = (1 - m)\\, \\hat\\mu_{t-1} + m\\, \\mu_t,

so after ``t`` updates the initial value still weighs ``(1 - m)^t``: it falls below 5 %
after ``t_95 = ln 0.05 / ln(1 - m)`` steps (299 for m = 0.01, 29 for m = 0.1). Until
then, and while the weights move faster than the averages follow, the network deployed
in eval mode is not the one that was trained. This experiment measures that lag: at
steps early in training, the test accuracy in eval mode against the accuracy with the
statistics of test batches (train mode), for several momenta.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.errors import UsageError
from normlab.lab.cells import Cell, estimate_seconds, eval_seconds, seed_list
from normlab.lab.common import (
    LENET,
    accuracy_with_batch_stats,
    check_common,
    check_positive_int,
    curve_mean_std,
    history_record,
    train_config,
)
from normlab.lab.experiment import Curve, Experiment, FigureSpec, Option, TableSpec
from normlab.lab.figures import percent
from normlab.lab.verdicts import AGREES, DISAGREES, INCONCLUSIVE, Finding, pct

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

    from normlab.data import Dataset

__all__ = [
    "MOMENTUM",
    "Momentum",
    "MomentumConfig",
    "MomentumPoint",
    "MomentumSummary",
    "eval_steps",
    "remaining_init_weight",
    "set_norm_momentum",
    "steps_to_forget",
]


def remaining_init_weight(momentum: float, steps: int) -> float:
    """Weight of the initial running statistics after ``steps`` updates: ``(1 - m)^t``."""
    return (1.0 - momentum) ** steps


def steps_to_forget(momentum: float, fraction: float = 0.05) -> float:
    """Updates until the initial value weighs less than ``fraction``:
    ``ln(fraction) / ln(1 - m)`` (0 for ``m = 1``)."""
    if momentum >= 1.0:
        return 0.0
    return math.log(fraction) / math.log(1.0 - momentum)


def set_norm_momentum(model: nn.Module, momentum: float) -> int:
    """Set ``momentum`` on every norm layer that keeps running statistics; how many."""
    count = 0
    for module in model.modules():
        if getattr(module, "track_running_stats", False) and hasattr(module, "momentum"):
            module.momentum = momentum
            count += 1
    return count


def eval_steps(total_steps: int, points: int) -> list[int]:
    """Step 0 and ``points - 1`` steps spaced geometrically up to ``total_steps``
    (early training is where the lag changes fastest), without repeats."""
    check_positive_int("points", points, 2)
    check_positive_int("total_steps", total_steps)
    steps = {0, total_steps}
    for i in range(points - 1):
        steps.add(max(1, round(total_steps ** (i / (points - 2))) if points > 2 else 1))
    return sorted(s for s in steps if s <= total_steps)


@dataclass(frozen=True)
class MomentumConfig:
    """Settings of the running-statistics experiment (defaults: the study's budget)."""

    momenta: tuple[float, ...] = (0.01, 0.1, 0.5)  # torch's convention; its default is 0.1
    norm: str = "batch"  # a norm with running statistics
    seeds: int = 2
    epochs: int = 1  # early training
    evaluations: int = 9  # points where both accuracies are measured
    dataset: str = "fashion-mnist"
    train_subset: int | None = 10_000
    test_subset: int | None = 2_000  # each point evaluates it twice
    gap_tolerance: float = 0.02  # a gap within 2 points is closed (~2 std errors at 2 000)
    lr: float = 0.03  # the tutorial's
    momentum: float = 0.9  # SGD's momentum (not batch norm's)
    batch_size: int = 64  # also the size of the test batches for batch statistics
    activation: str = "sigmoid"
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.nn.registry import norm_names

        if isinstance(self.momenta, str) or not self.momenta:
            raise UsageError(f"momenta must be a non-empty list, got {self.momenta!r}")
        for m in self.momenta:
            if isinstance(m, bool) or not isinstance(m, int | float) or not 0 < m <= 1:
                raise UsageError(f"every batch-norm momentum must be in (0, 1], got {m!r}")
        if len(set(self.momenta)) != len(self.momenta):
            raise UsageError(f"momenta has repeats: {self.momenta}")
        if self.norm not in norm_names():
            raise UsageError(f"unknown norm {self.norm!r}; valid: {', '.join(norm_names())}")
        if not self.norm.removeprefix("torch-").startswith("batch"):
            raise UsageError(f"norm {self.norm!r} keeps no running statistics; use batch")
        check_positive_int("evaluations", self.evaluations, 2)
        if not isinstance(self.gap_tolerance, int | float) or not 0 <= self.gap_tolerance < 1:
            raise UsageError(f"gap_tolerance must be in [0, 1), got {self.gap_tolerance!r}")
        check_positive_int("batch_size", self.batch_size, 2)
        check_common(self)


@dataclass(frozen=True)
class MomentumPoint:
    """Every seed of one batch-norm momentum along the evaluation steps."""

    momentum: float
    steps: list[int]
    eval_accuracy: Curve  # running statistics (eval mode)
    batch_stats_accuracy: Curve  # statistics of the test batches
    gap: Curve  # batch_stats_accuracy - eval_accuracy, per seed
    max_gap_after_start: float | None
    closed_at_step: int | None  # first step with |gap| <= tolerance (None: never)
    steps_to_forget: float  # closed form t_95 = ln 0.05 / ln(1 - m)
    diverged: int
    seeds: int


@dataclass(frozen=True)
class MomentumSummary:
    """One point per momentum; the gap that counts as closed."""

    momenta: list[MomentumPoint]
    tolerance: float


class Momentum(Experiment[MomentumConfig, MomentumSummary]):
    """Train BN-LeNet with each batch-norm momentum; the eval-mode lag along the steps."""

    name = "momentum"
    title = "Running statistics and momentum"
    introduction = (
        "Batch norm's running averages follow the batch statistics with momentum m "
        "(torch's convention: the weight of the new batch); until they catch up, eval "
        "mode runs a different network than the one trained. Measured early in training: "
        "test accuracy in eval mode against accuracy with the test batches' own "
        "statistics."
    )
    config_type = MomentumConfig
    summary_type = MomentumSummary
    command = ("sweep", "momentum")
    options = (
        Option("--momenta", "momenta", "float-list",
               "momentum: BN momenta (default 0.01,0.1,0.5)", "A,B,..."),
        Option("--lr", "lr", "float", "the SGD learning rate (batch-size: at 32)", "LR"),
    )  # fmt: skip

    def study_config(
        self, *, quick: bool, dataset: str, device: str, syncbn: bool
    ) -> MomentumConfig:
        if quick:
            return MomentumConfig(
                dataset=dataset, device=device, train_subset=2_000, test_subset=500,
                seeds=2, evaluations=6,
            )  # fmt: skip
        return MomentumConfig(dataset=dataset, device=device)

    def models(self, config: MomentumConfig) -> tuple[str, ...]:
        del config
        return (LENET,)

    def cells(self, config: MomentumConfig) -> list[Cell]:
        """One cell per batch-norm momentum x seed."""
        examples = config.epochs * (config.train_subset or 60_000)
        tests = config.evaluations * (config.test_subset or 10_000)
        return [
            Cell(
                self.name,
                (("bn_momentum", float(m)),),
                seed,
                estimate_seconds(examples, config.batch_size, config.norm)
                + eval_seconds(tests)
                + estimate_seconds(tests, config.batch_size) / 3,
            )
            for m in config.momenta
            for seed in seed_list(config.seeds)
        ]

    def run_cell(self, config: MomentumConfig, data: Dataset, cell: Cell) -> dict[str, Any]:
        """Train one BN-LeNet with ``cell``'s batch-norm momentum; both accuracies at the
        evaluation steps."""
        from normlab.data import num_batches
        from normlab.train.engine import StepInfo, build_model, evaluate, fit

        bn_momentum = float(cell.params["bn_momentum"])
        train = train_config(config, norm=config.norm, seed=cell.seed)
        model = build_model(train)
        if set_norm_momentum(model, bn_momentum) == 0:
            raise UsageError(f"norm {config.norm!r} has no running statistics to follow")
        total = num_batches(len(data.train_labels), train.batch_size) * train.epochs
        when = set(eval_steps(total, config.evaluations))
        points: list[dict[str, Any]] = []

        def measure(step: int) -> None:
            _, eval_acc = evaluate(
                model, data.test_images, data.test_labels, batch_size=1000, device=train.device
            )
            batch_acc = accuracy_with_batch_stats(
                model, data.test_images, data.test_labels, train.batch_size, device=train.device
            )
            points.append(
                {
                    "step": step,
                    "eval_accuracy": eval_acc,
                    "batch_stats_accuracy": batch_acc,
                    "init_weight": remaining_init_weight(bn_momentum, step),
                }
            )

        def on_step(info: StepInfo) -> None:
            if info.step + 1 in when:
                measure(info.step + 1)

        if 0 in when:
            measure(0)
        history = fit(model, data, train, progress=False, on_step=on_step)
        record = history_record(history)
        record["points"] = points
        return record

    def summarize(
        self, config: MomentumConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
    ) -> MomentumSummary:
        """Per momentum: both accuracies and their gap along the steps (mean ± std), when
        the gap closed, and the closed-form ``t_95``."""
        momenta = []
        for m in config.momenta:
            runs = [results[c.key] for c in cells if c.params["bn_momentum"] == float(m)]
            common = min(len(r["points"]) for r in runs)
            steps = [p["step"] for p in runs[0]["points"][:common]]
            eval_curves = [[p["eval_accuracy"] for p in r["points"][:common]] for r in runs]
            batch_curves = [[p["batch_stats_accuracy"] for p in r["points"][:common]] for r in runs]
            gap_curves = [
                [b - e for b, e in zip(bc, ec, strict=True)]
                for bc, ec in zip(batch_curves, eval_curves, strict=True)
            ]
            gap = curve_mean_std(gap_curves)
            momenta.append(
                MomentumPoint(
                    momentum=float(m),
                    steps=steps,
                    eval_accuracy=curve_mean_std(eval_curves),
                    batch_stats_accuracy=curve_mean_std(batch_curves),
                    gap=gap,
                    max_gap_after_start=max(gap.mean[1:], default=None),
                    closed_at_step=closed_at(steps, gap.mean, config_tolerance(config)),
                    steps_to_forget=steps_to_forget(float(m)),
                    diverged=sum(bool(r["diverged"]) for r in runs),
                    seeds=len(runs),
                )
            )
        return MomentumSummary(momenta=momenta, tolerance=config_tolerance(config))

    def findings(self, summary: MomentumSummary) -> list[Finding]:
        return momentum_findings(summary)

    def table(self, summary: MomentumSummary) -> TableSpec:
        from normlab.report import Column

        rows = [
            {
                "momentum": m.momentum,
                "max_gap": m.max_gap_after_start,
                "closed": m.closed_at_step,
                "forget": m.steps_to_forget,
                "end_eval": m.eval_accuracy.mean[-1] if m.eval_accuracy.mean else None,
                "end_batch": (
                    m.batch_stats_accuracy.mean[-1] if m.batch_stats_accuracy.mean else None
                ),
            }
            for m in summary.momenta
        ]
        columns = [
            Column("momentum", "BN momentum", fmt="g"),
            Column("max_gap", "largest gap", fmt="percent"),
            Column("closed", "gap first closed at step"),
            Column("forget", "closed form t95", fmt=".0f"),
            Column("end_eval", "eval acc (end)", fmt="percent"),
            Column("end_batch", "batch-stats acc (end)", fmt="percent"),
        ]
        return TableSpec(rows, columns)

    def figures(self, summary: MomentumSummary) -> list[FigureSpec]:
        return [
            FigureSpec(
                "momentum",
                momentum_figure(summary),
                "Early training: eval-mode accuracy against batch-statistics accuracy for "
                "several batch-norm momenta.",
            )
        ]


MOMENTUM = Momentum()


def config_tolerance(config: MomentumConfig) -> float:
    """A gap this small counts as closed: ``gap_tolerance``, or 2 test examples if more."""
    return max(float(config.gap_tolerance), 2.0 / (config.test_subset or 10_000))


def closed_at(steps: Sequence[int], gaps: Sequence[float], tolerance: float) -> int | None:
    """The first step at which the gap is within ``tolerance`` (None: never). Later
    points can move out again by sampling noise; the last gap is reported beside it."""
    for step, gap in zip(steps, gaps, strict=True):
        if abs(gap) <= tolerance:
            return step
    return None


# ================================================================================ findings
def momentum_findings(summary: MomentumSummary) -> list[Finding]:
    """How far eval mode lagged, when the lag closed, against the closed form."""
    findings: list[Finding] = []
    closing: list[tuple[float, int | None]] = []
    for item in summary.momenta:
        m = item.momentum
        gap = item.max_gap_after_start
        closed = item.closed_at_step
        closing.append((m, closed))
        end = item.gap.mean[-1] if item.gap.mean else None
        when = (
            f"first came within {pct(summary.tolerance):.1f} points at step {closed}"
            if closed is not None
            else f"had not closed by step {item.steps[-1]}"
        ) + f" (last gap {100 * end:.1f} points)"
        findings.append(
            Finding(
                "momentum",
                f"With batch-norm momentum {m:g}, eval mode trailed batch statistics by up to "
                f"{100 * gap:.1f} points; the gap {when}. The running averages forget their "
                f"initial value (to 5 %) after {item.steps_to_forget:.0f} steps.",
                numbers={
                    "momentum": m,
                    "max_gap": round(100 * gap, 1),
                    **({"closed_at": closed} if closed is not None else {}),
                    "steps_to_forget": round(item.steps_to_forget),
                },
            )
        )
    if len(closing) >= 2:
        ordered = sorted(closing)  # by momentum, ascending
        horizon = max(s for it in summary.momenta for s in it.steps) + 1
        keys = [horizon if c is None else c for _, c in ordered]
        monotone = all(a >= b for a, b in itertools.pairwise(keys))
        findings.append(
            Finding(
                "momentum",
                "A larger momentum closed the gap "
                + ("no later" if monotone else "not always sooner")
                + " than a smaller one ("
                + ", ".join(
                    f"{m:g}: " + ("not closed" if c is None else f"step {c}") for m, c in ordered
                )
                + ").",
                claim=(
                    "The closed form (1 - m)^t predicts that the initial running statistics "
                    "fade after ln 0.05 / ln(1 - m) steps, sooner for a larger momentum."
                ),
                verdict=(
                    INCONCLUSIVE
                    if all(c is None for _, c in ordered)
                    else AGREES
                    if monotone
                    else DISAGREES
                ),
            )
        )
    return findings


# ================================================================================= figures
def momentum_figure(summary: MomentumSummary) -> Figure:
    """Test accuracy along the first steps in eval mode (solid) and with batch statistics
    (dashed) for each batch-norm momentum (left); their gap (right)."""
    from normlab.report.plots import PALETTE, new_figure, plot_lines, style

    with style():
        fig, axes = new_figure(ncols=2, width=12.5, height=4.5)
        for index, item in enumerate(summary.momenta):
            color = PALETTE[index % len(PALETTE)]
            steps = np.asarray(item.steps, dtype=np.float64)
            x = np.maximum(steps, 0.5)  # step 0 on a log axis
            n = len(item.eval_accuracy.mean)
            axes[0].plot(x[:n], percent(item.eval_accuracy.mean), color=color,
                         marker="o", ms=3, label=f"m={item.momentum:g} eval mode")  # fmt: skip
            axes[0].plot(x[:n], percent(item.batch_stats_accuracy.mean), color=color,
                         ls="--", label=f"m={item.momentum:g} batch stats")  # fmt: skip
            gap = np.asarray(item.gap.values, dtype=np.float64)
            if gap.size:
                plot_lines(axes[1], x[: gap.shape[1]], {f"m={item.momentum:g}": 100 * gap},
                           colors=[color])  # fmt: skip
            forget = item.steps_to_forget
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
