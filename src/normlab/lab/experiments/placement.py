"""Where to put the norm: before or after the activation.

Ioffe & Szegedy (2015) put batch norm right before the nonlinearity (``x = Wu`` is
"more likely to have a symmetric, non-sparse distribution"), as the tutorial does;
Mishkin et al. (2017, "Systematic evaluation of CNN advances on the ImageNet") found
batch norm *after* the ReLU slightly better. This experiment trains LeNet with the norm
in both places, for each activation, several seeds, and reports the final accuracy
(mean ± std) and the difference against the spread between seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.errors import UsageError
from normlab.lab.cells import Cell, estimate_seconds, eval_seconds, seed_list
from normlab.lab.common import (
    LENET,
    check_choices,
    check_common,
    curve_mean_std,
    history_record,
    pm,
    seed_stats,
    train_config,
)
from normlab.lab.experiment import Curve, Experiment, FigureSpec, Option, SeedStats, TableSpec
from normlab.lab.figures import percent
from normlab.lab.verdicts import AGREES, DISAGREES, INCONCLUSIVE, Finding, fmt_pm, pct

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from normlab.data import Dataset

__all__ = ["PLACEMENT", "Placement", "PlacementConfig", "PlacementRow", "PlacementSummary"]


@dataclass(frozen=True)
class PlacementConfig:
    """Settings of the placement experiment (defaults: the study's budget)."""

    placements: tuple[str, ...] = ("before", "after")  # the norm before/after the activation
    activations: tuple[str, ...] = ("sigmoid", "relu")  # the tutorial's, and the common one
    norm: str = "batch"  # the norm being placed
    seeds: int = 3
    epochs: int = 2
    dataset: str = "fashion-mnist"
    train_subset: int | None = 10_000
    test_subset: int | None = 2_000
    lr: float = 0.03  # the tutorial's
    momentum: float = 0.9
    batch_size: int = 64
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.models.lenet import ACTIVATIONS, PLACEMENTS
        from normlab.nn.registry import norm_names

        check_choices("placements", self.placements, PLACEMENTS)
        check_choices("activations", self.activations, list(ACTIVATIONS))
        if self.norm not in norm_names() or self.norm == "none":
            raise UsageError(
                f"norm must be a normalization (not 'none'), got {self.norm!r}; "
                f"valid: {', '.join(n for n in norm_names() if n != 'none')}"
            )
        check_common(self)


@dataclass(frozen=True)
class PlacementRow:
    """Every seed of one activation with the norm at one placement."""

    activation: str
    placement: str  # "before" or "after" the activation
    test_accuracy: SeedStats
    test_loss: SeedStats
    per_epoch_test_accuracy: Curve  # the finished runs
    diverged: int
    seeds: int


@dataclass(frozen=True)
class PlacementSummary:
    """One row per activation x placement; the norm that was placed."""

    rows: list[PlacementRow]
    norm: str


class Placement(Experiment[PlacementConfig, PlacementSummary]):
    """Train LeNet with the norm before and after each activation."""

    name = "placement"
    title = "Before or after the activation?"
    introduction = (
        "The norm right before the activation (Ioffe & Szegedy, the tutorial) or right "
        "after it, for the sigmoid and for ReLU."
    )
    config_type = PlacementConfig
    summary_type = PlacementSummary
    command = ("sweep", "placement")
    options = (
        Option("--activations", "activations", "list",
               "placement: activations (default sigmoid,relu)", "A,B,..."),
        Option("--lr", "lr", "float", "the SGD learning rate (batch-size: at 32)", "LR"),
    )  # fmt: skip

    def study_config(
        self, *, quick: bool, dataset: str, device: str, syncbn: bool
    ) -> PlacementConfig:
        if quick:
            return PlacementConfig(
                dataset=dataset, device=device, train_subset=2_000, test_subset=500,
                seeds=2, epochs=1,
            )  # fmt: skip
        return PlacementConfig(dataset=dataset, device=device)

    def models(self, config: PlacementConfig) -> tuple[str, ...]:
        del config
        return (LENET,)

    def cells(self, config: PlacementConfig) -> list[Cell]:
        """One cell per activation x placement x seed."""
        examples = config.epochs * (config.train_subset or 60_000)
        tests = config.epochs * (config.test_subset or 10_000)
        return [
            Cell(
                self.name,
                (("activation", activation), ("placement", placement)),
                seed,
                estimate_seconds(examples, config.batch_size, config.norm) + eval_seconds(tests),
            )
            for activation in config.activations
            for placement in config.placements
            for seed in seed_list(config.seeds)
        ]

    def run_cell(self, config: PlacementConfig, data: Dataset, cell: Cell) -> dict[str, Any]:
        """Train one LeNet with the norm at ``cell``'s placement and activation."""
        from normlab.train.engine import build_model, fit

        params = cell.params
        train = train_config(
            config,
            norm=config.norm,
            activation=params["activation"],
            placement=params["placement"],
            seed=cell.seed,
        )
        return history_record(fit(build_model(train), data, train, progress=False))

    def summarize(
        self, config: PlacementConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
    ) -> PlacementSummary:
        """Per activation and placement: final test accuracy and loss, mean ± std."""
        rows = []
        for activation in config.activations:
            for placement in config.placements:
                runs = [
                    results[c.key]
                    for c in cells
                    if c.params == {"activation": activation, "placement": placement}
                ]
                finished = [r for r in runs if r["final"] is not None]
                rows.append(
                    PlacementRow(
                        activation=activation,
                        placement=placement,
                        test_accuracy=seed_stats(
                            [None if r["final"] is None else r["final"]["test_accuracy"]
                             for r in runs]
                        ),
                        test_loss=seed_stats(
                            [None if r["final"] is None else r["final"]["test_loss"] for r in runs]
                        ),
                        per_epoch_test_accuracy=curve_mean_std(
                            [[e["test_accuracy"] for e in r["epochs"]] for r in finished]
                        ),
                        diverged=sum(bool(r["diverged"]) for r in runs),
                        seeds=len(runs),
                    )
                )  # fmt: skip
        return PlacementSummary(rows=rows, norm=config.norm)

    def findings(self, summary: PlacementSummary) -> list[Finding]:
        return placement_findings(summary)

    def table(self, summary: PlacementSummary) -> TableSpec:
        from normlab.report import Column

        rows = [
            {
                "activation": r.activation,
                "placement": r.placement,
                "accuracy": pm(r.test_accuracy),
                "loss": pm(r.test_loss, 1.0, ""),
                "diverged": f"{r.diverged}/{r.seeds}",
            }
            for r in summary.rows
        ]
        columns = [
            Column("activation"),
            Column("placement", "norm placed"),
            Column("accuracy", "test accuracy", align="right"),
            Column("loss", "test loss", align="right"),
            Column("diverged", "diverged", align="right"),
        ]
        return TableSpec(rows, columns)

    def figures(self, summary: PlacementSummary) -> list[FigureSpec]:
        return [
            FigureSpec(
                "placement",
                placement_figure(summary),
                "Final test accuracy with the norm before or after the activation.",
            )
        ]


PLACEMENT = Placement()


# ================================================================================ findings
def placement_findings(summary: PlacementSummary) -> list[Finding]:
    """Before against after, per activation, measured against the spread of seeds."""
    rows = summary.rows
    findings: list[Finding] = []
    for activation in dict.fromkeys(r.activation for r in rows):
        by = {r.placement: r for r in rows if r.activation == activation}
        if "before" not in by or "after" not in by:
            continue
        a, b = by["before"].test_accuracy, by["after"].test_accuracy
        if a.mean is None or b.mean is None:
            continue
        diff = pct(b.mean) - pct(a.mean)
        noise = pct(max(a.std, b.std))
        winner = "after" if diff > 0 else "before"
        if abs(diff) <= noise:
            verdict_text = "within the spread between seeds"
            verdict = INCONCLUSIVE
        else:
            verdict_text = f"{winner} is better by more than the spread between seeds"
            verdict = AGREES if (activation == "relu") == (winner == "after") else DISAGREES
        if activation == "relu":
            claim = (
                "Mishkin et al. (2017) found batch norm after the ReLU slightly better on "
                "ImageNet; Ioffe & Szegedy (2015) put it before."
            )
        else:
            claim = (
                "Ioffe & Szegedy (2015) put batch norm before the nonlinearity, as the "
                "tutorial does, to keep the sigmoid out of saturation."
            )
        findings.append(
            Finding(
                "placement",
                f"With {activation}, {summary.norm} norm before the activation "
                f"reaches {fmt_pm(a)} and after it {fmt_pm(b)}: a difference of {diff:+.1f} "
                f"points, {verdict_text} ({noise:.1f} points).",
                claim=claim,
                verdict=verdict,
                numbers={
                    "before": pct(a.mean),
                    "after": pct(b.mean),
                    "difference": round(diff, 1),
                    "noise": noise,
                },
            )
        )
    return findings


# ================================================================================= figures
def placement_figure(summary: PlacementSummary) -> Figure:
    """Final test accuracy with the norm before and after each activation: bars are the
    mean, error bars ±1 std, dots the seeds."""
    from normlab.report.plots import PALETTE, new_figure, style

    rows = summary.rows
    activations = list(dict.fromkeys(r.activation for r in rows))
    placements = list(dict.fromkeys(r.placement for r in rows))
    width = 0.8 / max(len(placements), 1)
    with style():
        fig, (ax,) = new_figure(width=7.0, height=4.3)
        low = 100.0
        for j, placement in enumerate(placements):
            for i, activation in enumerate(activations):
                row = next(
                    r for r in rows if r.activation == activation and r.placement == placement
                )
                values = [v for v in row.test_accuracy.values if v is not None]
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
                ax.scatter([x] * len(values), percent(values), s=12, color="black", zorder=3)
        ax.set_xticks(range(len(activations)), activations)
        ax.set_ylim(max(0.0, low - 5.0), 100)
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title("Norm before or after the activation")
        ax.grid(axis="x", visible=False)
        ax.legend(fontsize=9)
    return fig
