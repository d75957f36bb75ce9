"""Small batches: batch norm against group and layer norm from 2 to 128 images per batch.

Batch norm estimates its statistics from the batch; with 2 examples they are noise. Wu &
He (2018) report ResNet-50 ImageNet error rising from 23.6 % at 32 images per batch to
34.7 % at 2 for batch norm, while group norm stays at 24.1 ± 0.1 %. This experiment
trains every arm at each batch size on the same number of examples (so smaller batches
take more steps) with the learning rate scaled linearly with the batch size (Goyal et al.
2017, as Wu & He do), and measures the test accuracy twice: in eval mode (running
statistics, how a model is deployed) and with the statistics of test batches of the
training batch size.

An *arm* is a norm registry name trained in one process, or an arm registered with
:func:`register_batch_size_arm` (the SyncBN arms of :mod:`normlab.lab.syncbn_arm` are
two: small per-process batches with and without synchronisation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from normlab.errors import UsageError
from normlab.lab.cells import Cell, estimate_seconds, eval_seconds, seed_list
from normlab.lab.common import (
    CHANCE_MARGIN,
    LENET,
    accuracy_with_batch_stats,
    check_choices,
    check_common,
    check_positive_int,
    history_record,
    pm,
    seed_stats,
    train_config,
)
from normlab.lab.experiment import Experiment, FigureSpec, Option, SeedStats, TableSpec
from normlab.lab.figures import finite_rows, percent
from normlab.lab.guide import SYNCBN, GuideRow, leaders, recommendation_text, separated
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

__all__ = [
    "BATCH_SIZE_ARMS",
    "BATCH_SIZE_SWEEP",
    "BatchSizeArm",
    "BatchSizePoint",
    "BatchSizeSummary",
    "BatchSizeSweep",
    "BatchSizeSweepConfig",
    "register_batch_size_arm",
]


@dataclass(frozen=True)
class BatchSizeSweepConfig:
    """Settings of the batch-size sweep (defaults: the study's budget)."""

    batch_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128)  # examples per batch
    arms: tuple[str, ...] = ("batch", "group", "layer")  # norms or registered arms
    seeds: int = 2  # runs per (arm, batch size)
    epochs: int = 1  # every batch size sees epochs x train_subset examples
    dataset: str = "fashion-mnist"
    train_subset: int | None = 8_192  # a multiple of every batch size: no ragged batch
    test_subset: int | None = 2_000
    lr: float = 0.1  # at base_batch_size (Wu & He: 0.1 per 32 images); scaled (lr_scaling)
    base_batch_size: int = 32  # the batch size at which lr applies
    lr_scaling: str = "linear"  # lr * B / base (Goyal et al. 2017), or "constant"
    momentum: float = 0.9
    activation: str = "relu"  # as Wu & He's ResNet; sigmoid GN/LN learn too slowly here
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.nn.registry import norm_names

        if isinstance(self.batch_sizes, str) or not self.batch_sizes:
            raise UsageError(f"batch_sizes must be a non-empty list, got {self.batch_sizes!r}")
        for size in self.batch_sizes:
            check_positive_int("every batch size", size, 2)
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise UsageError(f"batch_sizes has repeats: {self.batch_sizes}")
        for arm in self.arms:
            if arm not in norm_names():
                load_arm(arm)
        check_choices("arms", self.arms, [*norm_names(), *BATCH_SIZE_ARMS, *ARM_PLUGINS])
        check_positive_int("base_batch_size", self.base_batch_size)
        if self.lr_scaling not in LR_SCALINGS:
            raise UsageError(
                f"unknown lr_scaling {self.lr_scaling!r}; valid: {', '.join(LR_SCALINGS)}"
            )
        check_common(self)
        for size in self.batch_sizes:
            self.lr_for(size)
        train = self.train_subset
        if train is not None and any(train % b == 1 for b in self.batch_sizes):
            raise UsageError(
                f"train_subset {train} leaves a last batch of 1 example for some batch size, "
                "which batch norm cannot normalise; pick a multiple of the batch sizes"
            )

    def lr_for(self, batch_size: int) -> float:
        """The learning rate at ``batch_size``: ``lr * B / base_batch_size`` (linear) or
        ``lr`` (constant)."""
        if self.lr_scaling == "constant":
            return float(self.lr)
        return float(self.lr) * batch_size / self.base_batch_size


LR_SCALINGS = ("linear", "constant")


BatchSizeArm = Callable[["BatchSizeSweepConfig", "Dataset", int, int], Mapping[str, Any]]
"""``arm(config, data, batch_size, seed) -> record``: trains one model, returns a dict
with at least ``final`` (``None`` or ``{"test_accuracy", ...}`` in eval mode),
``diverged``, ``batch_stats_accuracy`` and ``loss_curve`` (see :func:`run_batch_size_cell`)."""

BATCH_SIZE_ARMS: dict[str, BatchSizeArm] = {}

# Arms that register themselves on first use: name -> "module:function" to call.
ARM_PLUGINS: dict[str, str] = {
    "syncbn": "normlab.lab.syncbn_arm:register_syncbn_arms",  # P processes, synchronised BN
    "localbn": "normlab.lab.syncbn_arm:register_syncbn_arms",  # P processes, per-process BN
}


def load_arm(name: str) -> bool:
    """Register ``name`` from :data:`ARM_PLUGINS` if it is not registered yet; whether
    it is registered now."""
    import importlib

    if name in BATCH_SIZE_ARMS:
        return True
    if name not in ARM_PLUGINS:
        return False
    module, function = ARM_PLUGINS[name].split(":")
    getattr(importlib.import_module(module), function)()
    return name in BATCH_SIZE_ARMS


def register_batch_size_arm(name: str, arm: BatchSizeArm) -> None:
    """Add an arm to the batch-size sweep (e.g. ``"syncbn"`` from normlab.distributed.groups).

    Its name may then appear in :attr:`BatchSizeSweepConfig.arms`. Worker processes
    receive the registered arms by pickling, so ``arm`` must be a module-level function
    (or a ``functools.partial`` of one).
    """
    from normlab.nn.registry import norm_names

    if not name or name in norm_names():
        raise UsageError(f"arm name {name!r} must be new and not a norm registry name")
    if not callable(arm):
        raise TypeError(f"arm must be callable, got {type(arm).__name__}")
    BATCH_SIZE_ARMS[name] = arm


@dataclass(frozen=True)
class BatchSizePoint:
    """Every seed of one arm at one batch size."""

    batch_size: int
    lr: float  # after scaling with the batch size
    steps: list[int]  # per seed
    eval_accuracy: SeedStats  # running statistics (eval mode)
    batch_stats_accuracy: SeedStats  # statistics of test batches of batch_size
    diverged: int
    seeds: int


@dataclass(frozen=True)
class BatchSizeSummary:
    """Per arm, its points in the order of the batch sizes."""

    arms: dict[str, list[BatchSizePoint]]
    examples_seen: int | None  # training examples every batch size saw
    chance: float | None  # the accuracy of a uniform guess


class BatchSizeSweep(Experiment[BatchSizeSweepConfig, BatchSizeSummary]):
    """Train every arm at every batch size for every seed."""

    name = "sweep-batch-size"
    title = "Small batches"
    introduction = (
        "Every arm trained on the same number of examples at each batch size (smaller "
        "batches take more steps), with the learning rate scaled linearly with the batch "
        "size, with ReLU (as Wu & He's ResNet). Accuracy in eval mode uses the running "
        "statistics, as a deployed model "
        "does; the batch-statistics accuracy normalises test batches of the training "
        "batch size by their own statistics. Wu & He (2018) report batch norm degrading "
        "at small batches while group norm does not."
    )
    config_type = BatchSizeSweepConfig
    summary_type = BatchSizeSummary
    command = ("sweep", "batch-size")
    options = (
        Option("--batch-sizes", "batch_sizes", "int-list",
               "batch-size: sizes (default 2,4,...,128)", "A,B,..."),
        Option("--arms", "arms", "list",
               "batch-size: norms or arms (default batch,group,layer)", "A,B,..."),
        Option("--lr-scaling", "lr_scaling", "str",
               "batch-size: linear (default, lr x B / 32) or constant"),
        Option("--lr", "lr", "float", "the SGD learning rate (batch-size: at 32)", "LR"),
    )  # fmt: skip

    def study_config(
        self, *, quick: bool, dataset: str, device: str, syncbn: bool
    ) -> BatchSizeSweepConfig:
        if quick:
            config = BatchSizeSweepConfig(
                dataset=dataset, device=device, train_subset=1_024, test_subset=500,
                batch_sizes=(2, 8, 32, 128), arms=("batch", "group"), seeds=2,
            )  # fmt: skip
        else:
            config = BatchSizeSweepConfig(dataset=dataset, device=device)
        if syncbn:
            config = dataclasses.replace(config, arms=(*config.arms, "syncbn", "localbn"))
        return config

    def models(self, config: BatchSizeSweepConfig) -> tuple[str, ...]:
        del config
        return (LENET,)

    def cells(self, config: BatchSizeSweepConfig) -> list[Cell]:
        """One cell per arm x batch size x seed."""
        examples = config.epochs * (config.train_subset or 60_000)
        tests = config.epochs * (config.test_subset or 10_000)
        return [
            Cell(
                self.name,
                (("arm", arm), ("batch_size", size)),
                seed,
                estimate_seconds(examples, size, arm)
                + eval_seconds(tests)
                + estimate_seconds(config.test_subset or 10_000, size) / 3,
            )
            for arm in config.arms
            for size in config.batch_sizes
            for seed in seed_list(config.seeds)
        ]

    def run_cell(self, config: BatchSizeSweepConfig, data: Dataset, cell: Cell) -> dict[str, Any]:
        """Train one model at ``cell``'s batch size; its accuracy with running statistics
        (eval mode, ``final``) and with the statistics of test batches of that size."""
        arm, size = cell.params["arm"], int(cell.params["batch_size"])
        if arm in BATCH_SIZE_ARMS:
            record = dict(BATCH_SIZE_ARMS[arm](config, data, size, cell.seed))
        else:
            record = _train_norm_arm(config, data, arm, size, cell.seed)
        record["lr"] = config.lr_for(size)
        record["examples_seen"] = config.epochs * len(data.train_labels)
        record["chance"] = 1.0 / len(data.classes)
        return record

    def summarize(
        self,
        config: BatchSizeSweepConfig,
        cells: list[Cell],
        results: Mapping[str, Mapping[str, Any]],
    ) -> BatchSizeSummary:
        """Per arm and batch size: accuracy in eval mode and with batch statistics."""
        arms: dict[str, list[BatchSizePoint]] = {}
        for arm in config.arms:
            points = []
            for size in config.batch_sizes:
                runs = [
                    results[c.key]
                    for c in cells
                    if c.params["arm"] == arm and c.params["batch_size"] == size
                ]
                points.append(
                    BatchSizePoint(
                        batch_size=size,
                        lr=config.lr_for(size),
                        steps=[r["steps"] for r in runs],
                        eval_accuracy=seed_stats(
                            [None if r["final"] is None else r["final"]["test_accuracy"]
                             for r in runs]
                        ),
                        batch_stats_accuracy=seed_stats(
                            [r["batch_stats_accuracy"] for r in runs]
                        ),
                        diverged=sum(bool(r["diverged"]) for r in runs),
                        seeds=len(runs),
                    )
                )  # fmt: skip
            arms[arm] = points
        first = next(iter(results.values()), None)
        return BatchSizeSummary(
            arms=arms,
            examples_seen=None if first is None else first["examples_seen"],
            chance=None if first is None else first["chance"],
        )

    def findings(self, summary: BatchSizeSummary) -> list[Finding]:
        return batch_size_findings(summary)

    def guide(self, summary: BatchSizeSummary) -> list[GuideRow]:
        return syncbn_guide(summary)

    def table(self, summary: BatchSizeSummary) -> TableSpec:
        from normlab.report import Column

        rows = [
            {
                "arm": arm,
                "batch_size": p.batch_size,
                "lr": p.lr,
                "steps": p.steps[0] if p.steps else None,
                "eval": pm(p.eval_accuracy),
                "batch": pm(p.batch_stats_accuracy),
                "diverged": f"{p.diverged}/{p.seeds}",
            }
            for arm, points in summary.arms.items()
            for p in points
        ]
        columns = [
            Column("arm", "norm"),
            Column("batch_size", "batch"),
            Column("lr", "lr", fmt=".4g"),
            Column("steps", "steps"),
            Column("eval", "eval-mode accuracy", align="right"),
            Column("batch", "batch-stats accuracy", align="right"),
            Column("diverged", "diverged", align="right"),
        ]
        return TableSpec(rows, columns)

    def figures(self, summary: BatchSizeSummary) -> list[FigureSpec]:
        caption = (
            "Accuracy against the batch size at a fixed number of examples seen, with "
            "running statistics (eval mode) and with the test batch's own statistics."
        )
        return [FigureSpec("sweep-batch-size", batch_size_figure(summary), caption)]

    def worker_state(self) -> dict[str, BatchSizeArm]:
        """The registered arms (a worker process starts without them)."""
        return dict(BATCH_SIZE_ARMS)

    def set_worker_state(self, state: Any) -> None:
        BATCH_SIZE_ARMS.update(state or {})


BATCH_SIZE_SWEEP = BatchSizeSweep()


def _train_norm_arm(
    config: BatchSizeSweepConfig, data: Dataset, norm: str, batch_size: int, seed: int
) -> dict[str, Any]:
    from normlab.train.engine import build_model, fit

    train = train_config(
        config, norm=norm, batch_size=batch_size, lr=config.lr_for(batch_size), seed=seed
    )
    model = build_model(train)
    history = fit(model, data, train, progress=False)
    record = history_record(history)
    record["batch_stats_accuracy"] = (
        None
        if record["final"] is None
        else accuracy_with_batch_stats(
            model, data.test_images, data.test_labels, batch_size, device=train.device
        )
    )
    return record


# ================================================================================ findings
WU_HE_BN = (32, 23.6, 2, 34.7)  # batch, error %, batch, error %


WU_HE_GN_SPREAD = 0.2  # 24.1 ± 0.1 % over batch sizes 32 ... 2


def reference_batch(sizes: Sequence[int], target: int = WU_HE_BN[0]) -> int:
    """The batch size closest to ``target`` (Wu & He's 32) on a log scale; ties: larger."""
    return min(sizes, key=lambda b: (abs(math.log2(b / target)), -b))


def batch_size_findings(summary: BatchSizeSummary) -> list[Finding]:
    """How much each arm loses from the reference batch (closest to Wu & He's 32) to the
    smallest (eval mode), compared across arms; batch against running statistics at the
    smallest batch."""
    arms = summary.arms
    findings: list[Finding] = []
    drops: dict[str, float] = {}
    learned_any = False
    for arm, points in arms.items():
        done = [p for p in points if p.eval_accuracy.mean is not None]
        if len(done) < 2:
            continue
        small = done[0]
        ref_size = reference_batch([p.batch_size for p in done[1:]])
        ref = next(p for p in done if p.batch_size == ref_size)
        drop = round(pct(ref.eval_accuracy.mean) - pct(small.eval_accuracy.mean), 1)
        best = max(done, key=lambda p: p.eval_accuracy.mean)
        drops[arm] = drop
        if summary.chance is not None and ref.eval_accuracy.mean > summary.chance + CHANCE_MARGIN:
            learned_any = True
        change = f"{drop:.1f} points lost" if drop >= 0 else f"{-drop:.1f} points gained"
        findings.append(
            Finding(
                "sweep-batch-size",
                f"{label(arm).capitalize()}: {fmt_pm(ref.eval_accuracy)} with "
                f"{ref.batch_size} images per batch, {fmt_pm(small.eval_accuracy)} with "
                f"{small.batch_size} ({change}); best {fmt_pct(best.eval_accuracy.mean)}"
                f" at {best.batch_size}.",
                numbers={
                    "ref_batch": ref.batch_size,
                    "ref_accuracy": pct(ref.eval_accuracy.mean),
                    "small_batch": small.batch_size,
                    "small_accuracy": pct(small.eval_accuracy.mean),
                    "change": abs(drop),
                    "best_accuracy": pct(best.eval_accuracy.mean),
                    "best_batch": best.batch_size,
                },
            )
        )
    others = {a: d for a, d in drops.items() if a in ("group", "layer")}
    if "batch" in drops and others:
        claim = (
            f"Wu & He (2018) report batch norm's ImageNet error rising from {WU_HE_BN[1]} % "
            f"at {WU_HE_BN[0]} images per batch to {WU_HE_BN[3]} % at {WU_HE_BN[2]} "
            f"(+{WU_HE_BN[3] - WU_HE_BN[1]:.1f} points), while group norm stays at "
            "24.1 ± 0.1 %."
        )
        worst_other = max(others.values())
        if not learned_any:
            verdict = INCONCLUSIVE  # nothing learned at the reference batch: all noise
        elif drops["batch"] > max(worst_other, 0.0) + 1.0:
            verdict = AGREES
        elif drops["batch"] < worst_other + 1.0:
            verdict = DISAGREES
        else:
            verdict = INCONCLUSIVE
        text = (
            "Going down to the smallest batch, batch norm's accuracy changes by "
            f"{-drops['batch']:+.1f} points, "
            + ", ".join(f"{label(a)}'s by {-d:+.1f}" for a, d in others.items())
            + "."
        )
        findings.append(
            Finding(
                "sweep-batch-size",
                text,
                claim=claim,
                verdict=verdict,
                numbers={f"{a}_change": -d for a, d in drops.items()},
            )
        )
    if "syncbn" in arms and "localbn" in arms:
        pairs = [
            (a, b)
            for a, b in zip(arms["syncbn"], arms["localbn"], strict=True)
            if a.eval_accuracy.mean is not None and b.eval_accuracy.mean is not None
        ]
        if pairs:
            sync, local = pairs[0]
            findings.append(
                Finding(
                    "sweep-batch-size",
                    f"With {sync.batch_size} images per step shared by several processes, "
                    f"synchronised batch norm scores {fmt_pm(sync.eval_accuracy)} and "
                    f"per-process batch norm {fmt_pm(local.eval_accuracy)}.",
                    numbers={
                        "syncbn_accuracy": pct(sync.eval_accuracy.mean),
                        "localbn_accuracy": pct(local.eval_accuracy.mean),
                    },
                )
            )
    if "batch" in arms:
        small = arms["batch"][0]
        eval_acc, batch_acc = small.eval_accuracy, small.batch_stats_accuracy
        if eval_acc.mean is not None and batch_acc.mean is not None:
            better = "better" if batch_acc.mean > eval_acc.mean else "worse"
            findings.append(
                Finding(
                    "sweep-batch-size",
                    f"At {small.batch_size} images per batch, batch norm with the statistics of "
                    f"test batches of {small.batch_size} scores {fmt_pct(batch_acc.mean)}, "
                    f"{better} than with its running statistics ({fmt_pct(eval_acc.mean)}).",
                    numbers={
                        "batch_stats_accuracy": pct(batch_acc.mean),
                        "eval_accuracy": pct(eval_acc.mean),
                    },
                )
            )
    return findings


def syncbn_guide(summary: BatchSizeSummary) -> list[GuideRow]:
    """The guide's SyncBN row, when the sweep ran the ``syncbn`` and ``localbn`` arms: at
    the smallest batch both finished, synchronised against per-process batch norm (eval
    mode). The verdict: synchronising helps (Wu & He: batch norm's statistics come from
    each GPU's batch; separated by more than the seeds' spread), hurts, or neither."""
    if "syncbn" not in summary.arms or "localbn" not in summary.arms:
        return []
    pairs = [
        (sync, local)
        for sync, local in zip(summary.arms["syncbn"], summary.arms["localbn"], strict=True)
        if sync.eval_accuracy.mean is not None and local.eval_accuracy.mean is not None
    ]
    if not pairs:
        return []
    sync, local = pairs[0]
    stats = {"syncbn": sync.eval_accuracy, "localbn": local.eval_accuracy}
    if not separated(sync.eval_accuracy, local.eval_accuracy):
        verdict = INCONCLUSIVE
    else:
        verdict = AGREES if sync.eval_accuracy.mean > local.eval_accuracy.mean else DISAGREES
    evidence = (
        f"{sync.batch_size} images per step shared by several processes: synchronised "
        f"batch norm {fmt_pm(sync.eval_accuracy)}, per-process batch norm "
        f"{fmt_pm(local.eval_accuracy)} (eval mode)."
    )
    literature = (
        f"Wu & He (2018): batch norm's ImageNet error rises from {WU_HE_BN[1]} % at "
        f"{WU_HE_BN[0]} images per GPU to {WU_HE_BN[3]} % at {WU_HE_BN[2]}, since its "
        "statistics are each GPU's; synchronising them gives the whole batch's."
    )
    recommendation = recommendation_text(leaders(stats), label, total=len(stats))
    return [GuideRow(SYNCBN, recommendation, evidence, literature, verdict)]


# ================================================================================= figures
def batch_size_figure(summary: BatchSizeSummary) -> Figure:
    """Test accuracy against the batch size: in eval mode (running statistics, left) and
    with the statistics of test batches of that size (right)."""
    from normlab.report.plots import new_figure, plot_lines, style

    with style():
        fig, axes = new_figure(ncols=2, width=12.5, height=4.5)
        for key, ax, title in (
            ("eval_accuracy", axes[0], "Eval mode (running statistics)"),
            ("batch_stats_accuracy", axes[1], "Statistics of the test batch"),
        ):
            series = {}
            sizes = None
            for arm, points in summary.arms.items():
                sizes = [p.batch_size for p in points]
                series[label(arm)] = percent(
                    finite_rows([getattr(p, key).values for p in points]).T
                )
            if sizes:
                plot_lines(ax, sizes, series)
            ax.set_xscale("log", base=2)
            if sizes:
                ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.set_xlabel(f"images per batch ({summary.examples_seen} examples seen)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(title)
            ax.legend(fontsize=9)
    return fig
