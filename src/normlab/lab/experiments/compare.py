"""Which normalization? The same LeNet with each norm layer, several seeds.

Every norm trains with the same settings, initial conv/linear weights (norm layers
initialise without randomness) and batch order per seed, so the differences come from
the normalization alone. ``torch-batch`` (torch.nn's batch norm) is the reference for
normlab's ``batch``: with the same seed the two see the same batches from the same
weights, and their curves must overlap. ``none`` is the plain network.

Per norm: test accuracy and loss after every epoch (mean ± std across seeds), the
training loss curve, and seconds per epoch.

Example::

    >>> result = run_experiment(COMPARE, CompareConfig(norms=("batch", "none"), seeds=2))
    >>> result.summary.norms["batch"].final_test_accuracy.mean   # doctest: +SKIP
    0.83
"""

from __future__ import annotations

import itertools
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
from normlab.lab.guide import (
    CNN_LARGE_BATCHES,
    GuideRow,
    leader_verdict,
    leaders,
    recommendation_text,
)
from normlab.lab.verdicts import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    Finding,
    fmt_pct,
    fmt_pm,
    label,
    pct,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from normlab.data import Dataset

__all__ = ["COMPARE", "DEFAULT_NORMS", "Compare", "CompareConfig", "CompareSummary", "NormRuns"]

DEFAULT_NORMS = ("batch", "torch-batch", "layer", "group", "instance", "rms", "none")


@dataclass(frozen=True)
class CompareConfig:
    """Settings of the norm comparison (defaults: the study's budget on a 2-core CPU)."""

    norms: tuple[str, ...] = DEFAULT_NORMS  # registry names; torch-batch is the reference
    seeds: int = 3  # runs per norm, seeds 0..seeds-1 (initialisation and batch order)
    epochs: int = 3  # passes over the training subset
    dataset: str = "fashion-mnist"  # or "mnist"; "synthetic" for tests
    train_subset: int | None = 10_000  # first N training images (None: all 60k)
    test_subset: int | None = 2_000  # first N test images (None: all 10k)
    lr: float = 0.03  # the tutorial's SGD learning rate
    momentum: float = 0.9  # the tutorial's SGD momentum
    batch_size: int = 64  # the tutorial's batch size
    activation: str = "sigmoid"  # the tutorial's
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.nn.registry import norm_names

        check_choices("norms", self.norms, norm_names())
        check_common(self)


@dataclass(frozen=True)
class EpochCurves:
    """Per-epoch numbers of the finished runs of one norm (mean ± std across seeds)."""

    test_accuracy: Curve
    test_loss: Curve
    train_loss: Curve
    train_accuracy: Curve


@dataclass(frozen=True)
class NormRuns:
    """Every seed of one norm."""

    seeds: int
    diverged: int  # seeds whose loss became non-finite
    final_test_accuracy: SeedStats
    final_test_loss: SeedStats
    final_train_loss: SeedStats
    seconds_per_epoch: SeedStats  # over every epoch of every seed
    per_epoch: EpochCurves
    loss_curves: list[list[list[float]]]  # per seed: [[mid_step, mean_loss], ...]


@dataclass(frozen=True)
class CompareSummary:
    """The comparison: per norm (in the config's order), its runs."""

    norms: dict[str, NormRuns]
    steps_per_epoch: int | None


class Compare(Experiment[CompareConfig, CompareSummary]):
    """Which normalization? The same LeNet with each norm layer, several seeds."""

    name = "compare"
    title = "Which normalization?"
    introduction = (
        "The same LeNet (sigmoid, average pooling, SGD with momentum) with each "
        "normalization in place of the tutorial's batch norm, several seeds. `torch-batch` "
        "is torch.nn's batch norm, the reference for normlab's `batch`; `none` is the plain "
        "network."
    )
    config_type = CompareConfig
    summary_type = CompareSummary
    command = ("compare",)
    options = (
        Option(
            "--norms",
            "norms",
            "list",
            "comma-separated registry names (default: batch,torch-batch,layer,group,"
            "instance,rms,none)",
            "A,B,...",
        ),
        Option("--lr", "lr", "float", "SGD learning rate (default 0.03)", "LR"),
        Option("--batch-size", "batch_size", "int>=2", "examples per step (default 64)", "N"),
        Option("--activation", "activation", "str", "sigmoid (default), relu, tanh, gelu"),
    )

    def study_config(
        self, *, quick: bool, dataset: str, device: str, syncbn: bool
    ) -> CompareConfig:
        if quick:
            return CompareConfig(
                dataset=dataset, device=device, train_subset=2_000, test_subset=500,
                seeds=2, epochs=1,
            )  # fmt: skip
        return CompareConfig(dataset=dataset, device=device)

    def models(self, config: CompareConfig) -> tuple[str, ...]:
        del config
        return (LENET,)

    def cells(self, config: CompareConfig) -> list[Cell]:
        """One cell per norm x seed."""
        examples = config.epochs * (config.train_subset or 60_000)
        tests = config.epochs * (config.test_subset or 10_000)
        return [
            Cell(
                self.name,
                (("norm", norm),),
                seed,
                estimate_seconds(examples, config.batch_size, norm) + eval_seconds(tests),
            )
            for norm in config.norms
            for seed in seed_list(config.seeds)
        ]

    def run_cell(self, config: CompareConfig, data: Dataset, cell: Cell) -> dict[str, Any]:
        """Train one LeNet with ``cell``'s norm and seed; its per-epoch numbers."""
        from normlab.train.engine import build_model, fit

        train = train_config(config, norm=cell.params["norm"], seed=cell.seed)
        history = fit(build_model(train), data, train, progress=False)
        return history_record(history)

    def summarize(
        self, config: CompareConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
    ) -> CompareSummary:
        """Per norm: mean ± std across seeds of every per-epoch number and the final ones."""
        norms: dict[str, NormRuns] = {}
        for norm in config.norms:
            runs = [results[c.key] for c in cells if c.params["norm"] == norm]
            if len(runs) != config.seeds:
                raise UsageError(
                    f"compare: expected {config.seeds} runs of {norm!r}, got {len(runs)}"
                )
            finished = [r for r in runs if r["final"] is not None]

            def per_epoch(key: str, finished: list = finished) -> Curve:
                return curve_mean_std([[e[key] for e in r["epochs"]] for r in finished])

            norms[norm] = NormRuns(
                seeds=len(runs),
                diverged=sum(r["diverged"] for r in runs),
                final_test_accuracy=seed_stats([_final(r, "test_accuracy") for r in runs]),
                final_test_loss=seed_stats([_final(r, "test_loss") for r in runs]),
                final_train_loss=seed_stats([_final(r, "train_loss") for r in runs]),
                seconds_per_epoch=seed_stats(
                    [e["train_seconds"] for r in runs for e in r["epochs"]]
                ),
                per_epoch=EpochCurves(
                    test_accuracy=per_epoch("test_accuracy"),
                    test_loss=per_epoch("test_loss"),
                    train_loss=per_epoch("train_loss"),
                    train_accuracy=per_epoch("train_accuracy"),
                ),
                loss_curves=[r["loss_curve"] for r in runs],
            )
        return CompareSummary(norms=norms, steps_per_epoch=_steps_per_epoch(results))

    def findings(self, summary: CompareSummary) -> list[Finding]:
        return compare_findings(summary)

    def guide(self, summary: CompareSummary) -> list[GuideRow]:
        return compare_guide(summary)

    def table(self, summary: CompareSummary) -> TableSpec:
        from normlab.report import Column

        rows = [
            {
                "norm": norm,
                "accuracy": pm(s.final_test_accuracy),
                "loss": pm(s.final_test_loss, 1.0, ""),
                "train_loss": pm(s.final_train_loss, 1.0, ""),
                "seconds": pm(s.seconds_per_epoch, 1.0, "s"),
                "diverged": f"{s.diverged}/{s.seeds}",
            }
            for norm, s in summary.norms.items()
        ]
        columns = [
            Column("norm"),
            Column("accuracy", "test accuracy", align="right"),
            Column("loss", "test loss", align="right"),
            Column("train_loss", "train loss", align="right"),
            Column("seconds", "time / epoch", align="right"),
            Column("diverged", "diverged", align="right"),
        ]
        return TableSpec(rows, columns)

    def figures(self, summary: CompareSummary) -> list[FigureSpec]:
        return [
            FigureSpec(
                "compare",
                compare_figure(summary),
                "Every normalization on the same LeNet: test accuracy per epoch, training "
                "loss, and the time per epoch.",
            )
        ]


COMPARE = Compare()


def _final(run: Mapping[str, Any], key: str) -> float | None:
    return None if run["final"] is None else float(run["final"][key])


def _steps_per_epoch(results: Mapping[str, Mapping[str, Any]]) -> int | None:
    for run in results.values():
        if run["epochs"]:
            return int(run["epochs"][0]["steps"])
    return None


# ================================================================================ findings
WU_HE_ERROR = {"batch": 23.6, "group": 24.1, "layer": 25.3, "instance": 28.4}  # Table 1


def compare_findings(summary: CompareSummary) -> list[Finding]:
    """Best norm, normlab against torch.nn, the order against Wu & He, the cost."""
    norms = summary.norms
    done = {n: s for n, s in norms.items() if s.final_test_accuracy.mean is not None}
    findings: list[Finding] = []
    if not done:
        return [Finding("compare", "No norm finished training; nothing to compare.")]
    best = max(done, key=lambda n: done[n].final_test_accuracy.mean)
    epochs = len(done[best].per_epoch.test_accuracy.mean)
    plural = "s" if epochs != 1 else ""
    text = (
        f"After {epochs} epoch{plural} the best test accuracy is {label(best)}'s "
        f"{fmt_pm(done[best].final_test_accuracy)}"
    )
    numbers = {"best_accuracy": pct(done[best].final_test_accuracy.mean)}
    if "none" in done and best != "none":
        plain = done["none"].final_test_accuracy
        text += f"; without normalization LeNet reaches {fmt_pm(plain)}"
        numbers["none_accuracy"] = pct(plain.mean)
    findings.append(Finding("compare", text + ".", numbers=numbers))

    if "batch" in done and "torch-batch" in done:
        ours = done["batch"].final_test_accuracy.values
        ref = done["torch-batch"].final_test_accuracy.values
        pairs = [(a, b) for a, b in zip(ours, ref, strict=False) if a is not None and b is not None]
        if pairs:
            gap = max(abs(a - b) for a, b in pairs) * 100
            ours_mean = done["batch"].final_test_accuracy.mean
            ref_mean = done["torch-batch"].final_test_accuracy.mean
            findings.append(
                Finding(
                    "compare",
                    f"normlab's batch norm reaches {fmt_pct(ours_mean)}"
                    f" and torch.nn's {fmt_pct(ref_mean)}"
                    f"; with the same seed they differ by at most {gap:.2f} points.",
                    numbers={
                        "batch_accuracy": pct(done["batch"].final_test_accuracy.mean),
                        "torch_accuracy": pct(done["torch-batch"].final_test_accuracy.mean),
                        "max_seed_gap": round(gap, 2),
                    },
                )
            )

    ranked = [n for n in WU_HE_ERROR if n in done]
    if len(ranked) >= 2:
        ours_order = sorted(ranked, key=lambda n: -done[n].final_test_accuracy.mean)
        paper_order = sorted(ranked, key=lambda n: WU_HE_ERROR[n])
        # Two neighbours whose means are closer than their seed spread are a tie.
        ties = [
            (a, b)
            for a, b in itertools.pairwise(ours_order)
            if abs(done[a].final_test_accuracy.mean - done[b].final_test_accuracy.mean)
            <= max(done[a].final_test_accuracy.std, done[b].final_test_accuracy.std)
        ]
        if ours_order == paper_order and not ties:
            verdict = AGREES
        elif _same_up_to_ties(ours_order, paper_order, ties):
            verdict = INCONCLUSIVE
        else:
            verdict = DISAGREES
        order = " > ".join(
            f"{label(n)} ({fmt_pct(done[n].final_test_accuracy.mean)})" for n in ours_order
        )
        tie_text = (
            f" ({', '.join(f'{label(a)} and {label(b)}' for a, b in ties)} are within one "
            "standard deviation of each other)"
            if ties
            else ""
        )
        claim = (
            "Wu & He (2018, Table 1) rank them "
            + " > ".join(f"{label(n)} ({100 - WU_HE_ERROR[n]:.1f} %)" for n in paper_order)
            + " in ImageNet top-1 accuracy (ResNet-50, 32 images per GPU)."
        )
        findings.append(
            Finding(
                "compare",
                f"Ranked by test accuracy: {order}{tie_text}.",
                claim=claim,
                verdict=verdict,
                numbers={f"{n}_accuracy": pct(done[n].final_test_accuracy.mean) for n in ranked},
            )
        )

    timed = {
        n: s.seconds_per_epoch.mean
        for n, s in norms.items()
        if s.seconds_per_epoch.mean is not None
    }
    if len(timed) >= 2:
        fast, slow = min(timed, key=timed.get), max(timed, key=timed.get)
        findings.append(
            Finding(
                "compare",
                f"An epoch of training took {timed[fast]:.2f} s with {label(fast)} (the fastest) "
                f"and {timed[slow]:.2f} s with {label(slow)} (the slowest).",
                numbers={
                    "fast_seconds": round(timed[fast], 2),
                    "slow_seconds": round(timed[slow], 2),
                },
            )
        )
    return findings


def compare_guide(summary: CompareSummary) -> list[GuideRow]:
    """The guide's "CNN with large batches" row: the norms not separated from the best
    final test accuracy (torch.nn's batch norm, the reference twin of ours, left out);
    the verdict: is batch norm among them (Wu & He's Table 1 ranks it first)?"""
    accuracy = {
        n: s.final_test_accuracy
        for n, s in summary.norms.items()
        if n != "torch-batch" and s.final_test_accuracy.mean is not None
    }
    if not accuracy:
        return []
    order = sorted(accuracy, key=lambda n: -accuracy[n].mean)  # type: ignore[operator]
    epochs = len(summary.norms[order[0]].per_epoch.test_accuracy.mean)
    evidence = (
        f"LeNet's test accuracy after {epochs} epoch{'s' if epochs != 1 else ''}: "
        + ", ".join(f"{label(n)} {fmt_pm(accuracy[n])}" for n in order)
        + "."
    )
    literature = (
        "Wu & He (2018, Table 1), ResNet-50 on ImageNet at 32 images per GPU: "
        + ", ".join(f"{label(n)} {100 - e:.1f} %" for n, e in WU_HE_ERROR.items())
        + " top-1 (batch norm first)."
    )
    return [
        GuideRow(
            CNN_LARGE_BATCHES,
            recommendation_text(leaders(accuracy), label, total=len(accuracy)),
            evidence,
            literature,
            leader_verdict(accuracy, "batch"),
        )
    ]


def _same_up_to_ties(ours: list[str], paper: list[str], ties: list[tuple[str, str]]) -> bool:
    """Whether swapping tied neighbours can turn ``ours`` into ``paper``."""
    tied = {frozenset(t) for t in ties}
    order = list(ours)
    for _ in range(len(order)):
        changed = False
        for i in range(len(order) - 1):
            a, b = order[i], order[i + 1]
            if paper.index(a) > paper.index(b) and frozenset((a, b)) in tied:
                order[i], order[i + 1] = b, a
                changed = True
        if not changed:
            break
    return order == paper


# ================================================================================= figures
def compare_figure(summary: CompareSummary) -> Figure:
    """Four panels, one colour per norm: the final test accuracy (bars: mean, error bars:
    ±1 std, dots: seeds), test accuracy per epoch, the training loss along the steps
    (mean over seeds), and the seconds per epoch."""
    from normlab.report.plots import PALETTE, new_figure, plot_lines, style

    norms = summary.norms
    names = list(norms)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    with style():
        fig, axes = new_figure(nrows=2, ncols=2, width=13.0, height=8.5)
        final_ax, epoch_ax, loss_ax, time_ax = axes
        low = 100.0
        for i, norm in enumerate(names):
            values = [100 * v for v in norms[norm].final_test_accuracy.values
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
            values = norms[norm].per_epoch.test_accuracy.values
            if values:
                acc_series[label(norm)] = percent(values)
        if acc_series:
            length = min(v.shape[1] for v in acc_series.values())
            cut = {k: v[:, :length] for k, v in acc_series.items()}
            plot_lines(epoch_ax, np.arange(1, length + 1), cut, colors=colors)
            epoch_ax.legend(fontsize=8)
        epoch_ax.set_xlabel("epoch")
        epoch_ax.set_ylabel("test accuracy (%)")
        epoch_ax.set_title("Test accuracy per epoch (mean ± std)")

        for i, norm in enumerate(names):
            curves = [c for c in norms[norm].loss_curves if c]
            if curves:
                length = min(len(c) for c in curves)
                xs = [p[0] for p in curves[0][:length]]
                ys = np.asarray([[p[1] for p in c[:length]] for c in curves])
                loss_ax.plot(xs, ys.mean(axis=0), color=colors[i], lw=1.5, label=label(norm))
        loss_ax.set_xlabel("training step")
        loss_ax.set_ylabel("training loss (nats)")
        loss_ax.set_title("Training loss (mean over seeds)")
        loss_ax.legend(fontsize=8)

        seconds = [norms[n].seconds_per_epoch for n in names]
        means = [s.mean if s.mean is not None else 0.0 for s in seconds]
        stds = [s.std or 0.0 for s in seconds]
        time_ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=4, alpha=0.85)
        time_ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        time_ax.set_ylabel("seconds per epoch")
        time_ax.set_title("Training time per epoch (this machine)")
        time_ax.grid(axis="x", visible=False)
    return fig
