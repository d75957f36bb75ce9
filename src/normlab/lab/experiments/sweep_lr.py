"""Higher learning rates: with and without batch norm over a log grid of rates.

Ioffe & Szegedy (2015) found that batch norm lets a network train with much higher
learning rates (their BN-Inception trained at 5x and 30x the base rate and reached the
baseline's accuracy in 14x fewer steps). This experiment trains each norm over a log grid
of rates and records the final accuracy and whether training *diverged* (a non-finite
loss: :attr:`normlab.train.engine.History.diverged`) or *did not learn* (final accuracy
within 5 points of chance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.errors import UsageError
from normlab.lab.cells import Cell, estimate_seconds, eval_seconds, seed_list
from normlab.lab.common import (
    CHANCE_MARGIN,
    LENET,
    check_choices,
    check_common,
    check_positive_int,
    history_record,
    pm,
    seed_stats,
    train_config,
)
from normlab.lab.experiment import Experiment, FigureSpec, Option, SeedStats, TableSpec
from normlab.lab.figures import finite_rows, nan_mean_std
from normlab.lab.verdicts import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    Finding,
    fmt_lr,
    fmt_pct,
    fmt_pm,
    label,
    pct,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from normlab.data import Dataset

__all__ = ["LR_SWEEP", "LrPoint", "LrSummary", "LrSweep", "LrSweepConfig", "log_grid"]


def log_grid(low: float, high: float, points: int) -> tuple[float, ...]:
    """``points`` learning rates spaced evenly in log scale from ``low`` to ``high``,
    each rounded to 2 significant digits: ``log_grid(0.01, 3, 6)`` =
    ``(0.01, 0.031, 0.098, 0.31, 0.96, 3.0)``."""
    if not (low > 0 and high > low):
        raise UsageError(f"need 0 < low < high for a log grid, got {low!r} and {high!r}")
    check_positive_int("points", points, 2)
    ratio = math.log(high / low)
    return tuple(float(f"{low * math.exp(ratio * i / (points - 1)):.2g}") for i in range(points))


def _check_positive_numbers(name: str, values: tuple[float, ...]) -> None:
    if isinstance(values, str) or not values:
        raise UsageError(f"{name} must be a non-empty list of numbers, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise UsageError(f"{name} must be positive numbers, got {value!r}")
        if not math.isfinite(value):
            raise UsageError(f"{name} must be finite, got {value!r}")
    if len(set(values)) != len(values):
        raise UsageError(f"{name} has repeats: {', '.join(map(str, values))}")


@dataclass(frozen=True)
class LrSweepConfig:
    """Settings of the learning-rate sweep (defaults: the study's budget)."""

    lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # log grid 0.01 ... 3
    norms: tuple[str, ...] = ("batch", "none")  # with and without batch norm
    seeds: int = 2  # runs per (norm, lr)
    epochs: int = 2
    dataset: str = "fashion-mnist"
    train_subset: int | None = 10_000
    test_subset: int | None = 2_000
    momentum: float = 0.9  # the tutorial's
    batch_size: int = 64  # the tutorial's
    activation: str = "relu"  # as Inception; a plain sigmoid LeNet learns at no rate here
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.nn.registry import norm_names

        _check_positive_numbers("lrs", self.lrs)
        check_choices("norms", self.norms, norm_names())
        check_common(self)


@dataclass(frozen=True)
class LrPoint:
    """Every seed of one norm at one learning rate."""

    lr: float
    test_accuracy: SeedStats
    test_loss: SeedStats
    diverged: int  # seeds whose loss became non-finite
    learned: int  # seeds that finished more than 5 points above chance
    seeds: int
    diverged_at_step: list[int | None]
    loss_curves: list[list[list[float]]]  # per seed: [[mid_step, mean_loss], ...]


@dataclass(frozen=True)
class LrSummary:
    """Per norm, its points in the order of the rates; the accuracy of a uniform guess."""

    norms: dict[str, list[LrPoint]]
    chance: float | None


class LrSweep(Experiment[LrSweepConfig, LrSummary]):
    """Train every norm at every learning rate for every seed."""

    name = "sweep-lr"
    title = "Higher learning rates"
    introduction = (
        "With and without batch norm over a log grid of learning rates, with ReLU (as "
        "Inception): the plain sigmoid LeNet does not leave its initial plateau at any rate "
        "in this budget (see the comparison), which would say nothing about rates. A run "
        "*diverged* when its loss became infinite or NaN; it *learned* when it finished more "
        "than 5 points above chance. Ioffe & Szegedy (2015) claim that batch norm allows "
        "much higher learning rates."
    )
    config_type = LrSweepConfig
    summary_type = LrSummary
    command = ("sweep", "lr")
    options = (
        Option("--lrs", "lrs", "float-list", "lr: learning rates (default 0.01..3)", "A,B,..."),
        Option("--norms", "norms", "list", "lr: norms to sweep (default batch,none)", "A,B,..."),
    )
    refused = (("--lr", "sweep lr takes its rates from --lrs, not --lr"),)

    def study_config(
        self, *, quick: bool, dataset: str, device: str, syncbn: bool
    ) -> LrSweepConfig:
        if quick:
            return LrSweepConfig(
                dataset=dataset, device=device, train_subset=2_000, test_subset=500,
                lrs=(0.03, 0.3, 1.0, 3.0), seeds=2, epochs=1,
            )  # fmt: skip
        return LrSweepConfig(dataset=dataset, device=device)

    def models(self, config: LrSweepConfig) -> tuple[str, ...]:
        del config
        return (LENET,)

    def cells(self, config: LrSweepConfig) -> list[Cell]:
        """One cell per norm x learning rate x seed."""
        examples = config.epochs * (config.train_subset or 60_000)
        tests = config.epochs * (config.test_subset or 10_000)
        return [
            Cell(
                self.name,
                (("norm", norm), ("lr", float(lr))),
                seed,
                estimate_seconds(examples, config.batch_size, norm) + eval_seconds(tests),
            )
            for norm in config.norms
            for lr in config.lrs
            for seed in seed_list(config.seeds)
        ]

    def run_cell(self, config: LrSweepConfig, data: Dataset, cell: Cell) -> dict[str, Any]:
        """Train one LeNet at ``cell``'s learning rate; whether it diverged or learned."""
        from normlab.train.engine import build_model, fit

        params = cell.params
        train = train_config(config, norm=params["norm"], lr=float(params["lr"]), seed=cell.seed)
        history = fit(build_model(train), data, train, progress=False)
        record = history_record(history)
        record["chance"] = 1.0 / len(data.classes)
        record["learned"] = _learned(record)
        return record

    def summarize(
        self, config: LrSweepConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
    ) -> LrSummary:
        """Per norm and learning rate: accuracy mean ± std, how many seeds diverged/learned."""
        norms: dict[str, list[LrPoint]] = {}
        for norm in config.norms:
            points = []
            for lr in config.lrs:
                runs = [
                    results[c.key]
                    for c in cells
                    if c.params["norm"] == norm and c.params["lr"] == float(lr)
                ]
                points.append(
                    LrPoint(
                        lr=float(lr),
                        test_accuracy=seed_stats(
                            [None if r["final"] is None else r["final"]["test_accuracy"]
                             for r in runs]
                        ),
                        test_loss=seed_stats(
                            [None if r["final"] is None else r["final"]["test_loss"] for r in runs]
                        ),
                        diverged=sum(bool(r["diverged"]) for r in runs),
                        learned=sum(bool(r["learned"]) for r in runs),
                        seeds=len(runs),
                        diverged_at_step=[r["diverged_at_step"] for r in runs],
                        loss_curves=[r["loss_curve"] for r in runs],
                    )
                )  # fmt: skip
            norms[norm] = points
        chance = next(iter(results.values()))["chance"] if results else None
        return LrSummary(norms=norms, chance=chance)

    def findings(self, summary: LrSummary) -> list[Finding]:
        return lr_findings(summary)

    def table(self, summary: LrSummary) -> TableSpec:
        from normlab.report import Column

        rows = [
            {
                "norm": norm,
                "lr": p.lr,
                "accuracy": pm(p.test_accuracy),
                "loss": pm(p.test_loss, 1.0, ""),
                "diverged": f"{p.diverged}/{p.seeds}",
                "learned": f"{p.learned}/{p.seeds}",
            }
            for norm, points in summary.norms.items()
            for p in points
        ]
        columns = [
            Column("norm"),
            Column("lr", "learning rate", fmt="g"),
            Column("accuracy", "test accuracy", align="right"),
            Column("loss", "test loss", align="right"),
            Column("diverged", "diverged", align="right"),
            Column("learned", "learned", align="right"),
        ]
        return TableSpec(rows, columns)

    def figures(self, summary: LrSummary) -> list[FigureSpec]:
        return [
            FigureSpec(
                "sweep-lr",
                lr_figure(summary),
                "Final test accuracy over a log grid of learning rates, with and without "
                "batch norm (crosses: a seed diverged).",
            )
        ]


LR_SWEEP = LrSweep()


def _learned(record: Mapping[str, Any]) -> bool:
    """Finished without diverging and ended clearly above chance."""
    final = record["final"]
    return final is not None and final["test_accuracy"] > record["chance"] + CHANCE_MARGIN


# ================================================================================ findings
def _all_learned(point: LrPoint) -> bool:
    return point.learned == point.seeds


def _failure(point: LrPoint) -> str:
    """What the plain network did at a rate where not every seed learned."""
    seeds, diverged, learned = point.seeds, point.diverged, point.learned
    if diverged == seeds:
        return "diverged"
    parts = []
    if learned:
        parts.append(f"learned in only {learned} of {seeds} seeds")
    if diverged:
        parts.append(f"diverged in {diverged} of {seeds}")
    if not parts or seeds - learned - diverged > 0:
        parts.append("stayed near chance" if not parts else "stayed near chance otherwise")
    return ", ".join(parts)


def lr_findings(summary: LrSummary) -> list[Finding]:
    """Where batch norm trained and the plain network did not; the highest rate each
    learned at; compared with Ioffe & Szegedy (2015)."""
    norms = summary.norms
    findings: list[Finding] = []
    highest = {}
    for norm, points in norms.items():
        learned = [p.lr for p in points if _all_learned(p)]
        highest[norm] = max(learned) if learned else None
    if "batch" in norms and "none" in norms:
        plain = {p.lr: p for p in norms["none"]}
        wins = [p for p in norms["batch"] if _all_learned(p) and not _all_learned(plain[p.lr])]
        if not any(_all_learned(p) for p in norms["none"]):
            wins = []  # the plain network learned nowhere: its usable rates are unknown
            best = max(
                (p for p in norms["none"] if p.test_accuracy.mean is not None),
                key=lambda p: p.test_accuracy.mean,
                default=None,
            )
            learned = [p.lr for p in norms["batch"] if _all_learned(p)]
            if best is not None:
                findings.append(
                    Finding(
                        "sweep-lr",
                        "Without normalization LeNet learned at no rate in this budget (best "
                        f"{fmt_pct(best.test_accuracy.mean)} at lr {fmt_lr(best.lr)})"
                        + (
                            f"; batch norm learned at {len(learned)} of {len(norms['batch'])} "
                            "rates."
                            if learned
                            else "."
                        ),
                        numbers={"none_accuracy": pct(best.test_accuracy.mean)},
                    )
                )
        for point in wins[-2:]:  # the two highest rates where it matters
            other = plain[point.lr]
            acc = other.test_accuracy
            other_text = f"the plain network {_failure(other)}" + (
                f" ({fmt_pct(acc.mean)})" if acc.mean is not None else ""
            )
            findings.append(
                Finding(
                    "sweep-lr",
                    f"Batch norm trained at lr {fmt_lr(point.lr)} "
                    f"({fmt_pm(point.test_accuracy)}) where {other_text}.",
                    numbers={
                        "lr": point.lr,
                        "batch_accuracy": pct(point.test_accuracy.mean),
                        **({"none_accuracy": pct(acc.mean)} if acc.mean is not None else {}),
                    },
                )
            )
        hb, hn = highest["batch"], highest["none"]
        claim = (
            "Ioffe & Szegedy (2015) report that batch norm allows much higher learning rates "
            "(BN-Inception trained at 5x and 30x the base rate, 14x fewer steps)."
        )
        if hn is None:
            verdict = INCONCLUSIVE  # no usable rate without normalization to compare with
        elif hb is not None and hb > hn:
            verdict = AGREES
        elif hn is not None and (hb is None or hn > hb):
            verdict = DISAGREES
        else:
            verdict = INCONCLUSIVE  # both learned up to the same rate, or neither learned
        nb = "no rate" if hb is None else f"lr {fmt_lr(hb)}"
        nn_ = "no rate" if hn is None else f"lr {fmt_lr(hn)}"
        ratio = f" ({hb / hn:g}x higher)" if hb and hn and hb > hn else ""
        findings.append(
            Finding(
                "sweep-lr",
                f"The highest learning rate at which every seed learned: {nb} with batch norm, "
                f"{nn_} without{ratio}.",
                claim=claim,
                verdict=verdict,
                numbers={k: v for k, v in (("batch_lr", hb), ("none_lr", hn)) if v is not None},
            )
        )
    for norm, points in norms.items():
        done = [p for p in points if p.test_accuracy.mean is not None]
        if done:
            best = max(done, key=lambda p: p.test_accuracy.mean)
            findings.append(
                Finding(
                    "sweep-lr",
                    f"Best accuracy with {label(norm)}: {fmt_pm(best.test_accuracy)} "
                    f"at lr {fmt_lr(best.lr)}.",
                    numbers={"accuracy": pct(best.test_accuracy.mean), "lr": best.lr},
                )
            )
    return findings


# ================================================================================= figures
def lr_figure(summary: LrSummary) -> Figure:
    """Final test accuracy against the learning rate (log scale); a cross marks a rate
    where some seed diverged, a dotted line the chance level."""
    from normlab.report.plots import PALETTE, new_figure, style

    with style():
        fig, (ax,) = new_figure(width=7.5, height=4.5)
        for index, (norm, points) in enumerate(summary.norms.items()):
            color = PALETTE[index % len(PALETTE)]
            lrs = np.asarray([p.lr for p in points])
            runs = finite_rows([p.test_accuracy.values for p in points]).T  # (seeds, lrs)
            mean, std = nan_mean_std(100 * runs)
            ax.plot(lrs, mean, marker="o", color=color, label=label(norm))
            ax.fill_between(lrs, mean - std, mean + std, color=color, alpha=0.2, lw=0)
            bad = [p.lr for p in points if p.diverged]
            if bad:
                ax.scatter(bad, [2.0] * len(bad), marker="x", s=60, color=color,
                           label=f"{label(norm)}: diverged")  # fmt: skip
        if summary.chance is not None:
            ax.axhline(100 * summary.chance, color="grey", ls=":", lw=1.2, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Learning-rate sweep (mean ± std over seeds)")
        ax.legend(fontsize=9)
    return fig
