"""Train against eval: which statistics batch norm normalises with after training.

In training batch norm normalises with the statistics of the batch; in evaluation with
*population* statistics, usually an exponential moving average (EMA) of past batch
statistics with momentum ``m`` (torch's convention: the new batch's weight),

.. math:: \\hat\\mu_t = (1 - m)\\,\\hat\\mu_{t-1} + m\\,\\mu_t ,

which averages over about ``1 / m`` batches computed under weights that have since moved.
This experiment measures three consequences on the tutorial's BN-LeNet:

- **statistics**: after every epoch, test accuracy with the test batches' own statistics,
  with the EMA of several momenta (all tracked along the *same* training run: the
  momentum of the running averages does not change training), and with "precise"
  statistics recomputed with the final weights over many training batches (Wu & Johnson
  2021, :func:`normlab.nn.recompute_batch_norm_stats`);
- **fine-tuning with tiny batches**: a network pre-trained at batch 64 is fine-tuned at
  batch 2 on a shifted subset (held-out training images at half the contrast and
  brighter, ``u // 2 + 100``) with batch norm, with frozen batch norm
  (:class:`normlab.nn.FrozenBatchNorm2d`: the pre-trained statistics and affine, fixed)
  and with group norm (pre-trained with group norm);
- **inference with fused batch norms** (:func:`normlab.nn.fuse_batch_norms`): the fused
  network's predictions against the unfused one's (disagreements, largest logit
  difference) and the time of one pass over the test images (best of several repeats).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.errors import UsageError
from normlab.lab.cells import Cell, estimate_seconds, eval_seconds, format_value, seed_list
from normlab.lab.common import (
    LENET,
    accuracy_with_batch_stats,
    check_choices,
    check_common,
    check_positive_int,
    curve_mean_std,
    pm,
    seed_stats,
    train_config,
)
from normlab.lab.experiment import Curve, Experiment, FigureSpec, Option, SeedStats, TableSpec
from normlab.lab.guide import FINE_TUNING, INFERENCE, GuideRow, leaders, recommendation_text
from normlab.lab.verdicts import AGREES, DISAGREES, INCONCLUSIVE, Finding, fmt3, fmt_pm, pct

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from torch import nn

    from normlab.data import Dataset

__all__ = [
    "FINETUNE_ARMS",
    "TRAIN_EVAL",
    "FinetuneStats",
    "FusionStats",
    "MovingAverages",
    "StatisticsRuns",
    "TrainEval",
    "TrainEvalConfig",
    "TrainEvalSummary",
    "compare_fused",
    "freeze_every_batch_norm",
    "train_eval_findings",
    "train_eval_guide",
]

PARTS = ("statistics", "finetune")
# arm -> the norm it is pre-trained with
FINETUNE_ARMS = {"batch": "batch", "frozen-batch": "batch", "group": "group"}
FINETUNE_LABELS = {
    "batch": "batch norm",
    "frozen-batch": "frozen batch norm",
    "group": "group norm",
}
WU_HE_BATCH2_ERROR = {"batch": 34.7, "group": 24.1}  # Wu & He (2018): ResNet-50, 2 images/GPU


# ==================================================================== the moving averages
class MovingAverages:
    """The EMA of every batch norm's batch statistics for several momenta at once.

    A forward pre-hook on every batch norm (found by type, as
    :func:`normlab.nn.recompute_batch_norm_stats` finds them) reads the input of each
    training-mode call and updates, per momentum ``m``, per channel::

        mean_m <- (1 - m) mean_m + m mean_B          var_m <- (1 - m) var_m + m var_B

    ``mean_B`` and ``var_B`` (unbiased, as torch stores it) over every dimension but the
    channels. The starting values are the layers' own (mean 0, variance 1). With the
    layers' own momentum the result equals their running statistics up to rounding.

    Args:
        model: the network about to train.
        momenta: the momenta to follow, each in (0, 1].
    """

    def __init__(self, model: nn.Module, momenta: Sequence[float]) -> None:
        from normlab.nn.precise_stats import batch_norm_layers

        self.momenta = [float(m) for m in momenta]
        self.layers = batch_norm_layers(model)
        self.means = {m: [layer.running_mean.clone() for layer in self.layers] for m in momenta}
        self.variances = {m: [layer.running_var.clone() for layer in self.layers] for m in momenta}
        self._hooks = [
            layer.register_forward_pre_hook(self._hook(index))
            for index, layer in enumerate(self.layers)
        ]

    def _hook(self, index: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        import torch

        def update(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if not module.training:
                return
            with torch.no_grad():
                x = args[0].detach()
                dims = [0, *range(2, x.dim())]
                mean = x.mean(dim=dims)
                var = x.var(dim=dims, correction=1)
                for m in self.momenta:
                    self.means[m][index].mul_(1 - m).add_(mean, alpha=m)
                    self.variances[m][index].mul_(1 - m).add_(var, alpha=m)

        return update

    def model_with(self, model: nn.Module, momentum: float) -> nn.Module:
        """A copy of ``model`` (the one given at construction, or its twin) whose batch
        norms hold the EMA of ``momentum``."""
        from normlab.nn.precise_stats import batch_norm_layers

        twin = copy.deepcopy(model)
        for layer, mean, var in zip(
            batch_norm_layers(twin), self.means[momentum], self.variances[momentum], strict=True
        ):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        return twin

    def remove(self) -> None:
        """Stop following the batch statistics."""
        for handle in self._hooks:
            handle.remove()


# ===================================================================== frozen batch norm
def freeze_every_batch_norm(model: nn.Module) -> nn.Module:
    """Every batch norm of ``model`` replaced by a frozen one holding its statistics and
    affine: :func:`normlab.nn.freeze_batch_norm` for the ``BatchNorm2d``, and a
    :class:`normlab.nn.FrozenBatchNorm2d` seeing fully connected features as 1x1 images
    (:class:`normlab.nn.registry.AsImage`) for the ``BatchNorm1d``. In place; returns
    ``model``."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from normlab.nn import FrozenBatchNorm2d, freeze_batch_norm
    from normlab.nn.registry import AsImage

    freeze_batch_norm(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(parent, name, AsImage(FrozenBatchNorm2d.from_batch_norm(child)))
    return model


# ================================================================================ fusion
@dataclass(frozen=True)
class FusedComparison:
    """The fused network against the unfused one on the same images."""

    disagreements: int  # examples whose predicted class differs
    unexplained: int  # of those, flips where the unfused top-2 margin exceeds 2x max_diff
    max_logit_difference: float  # largest |fused - unfused| over all logits
    batch_norms_left: int  # batch norms the fused copy still has
    unfused_seconds: float  # one pass over the images, best of the repeats
    fused_seconds: float


def _logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    import torch

    from normlab.data import normalize_images

    device = next(model.parameters()).device
    with torch.inference_mode():
        return torch.cat(
            [
                model(normalize_images(images[i : i + batch_size].to(device)))
                for i in range(0, len(images), batch_size)
            ]
        )


def _best_seconds(model: nn.Module, images: torch.Tensor, batch_size: int, repeats: int) -> float:
    """The fastest of ``repeats`` passes over ``images`` (on a GPU, waiting for the results)."""
    import torch

    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        logits = _logits(model, images, batch_size)
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)
        best = min(best, time.perf_counter() - started)
    return best


def compare_fused(
    model: nn.Module, images: torch.Tensor, batch_size: int, repeats: int
) -> FusedComparison:
    """Fuse ``model``'s batch norms (:func:`normlab.nn.fuse_batch_norms`) and compare.

    Shape:
        ``images``: uint8 ``(N, 28, 28)``.
    """
    from normlab.nn import fuse_batch_norms
    from normlab.nn.precise_stats import batch_norm_layers

    model = model.eval()
    fused = fuse_batch_norms(model)
    ours, theirs = _logits(fused, images, batch_size), _logits(model, images, batch_size)
    difference = float((ours.double() - theirs.double()).abs().max())
    flips = ours.argmax(dim=1) != theirs.argmax(dim=1)
    top2 = theirs.double().topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    unfused = fused_time = math.inf
    for _ in range(repeats):  # interleaved, so a busy spell slows both alike
        unfused = min(unfused, _best_seconds(model, images, batch_size, 1))
        fused_time = min(fused_time, _best_seconds(fused, images, batch_size, 1))
    return FusedComparison(
        disagreements=int(flips.sum()),
        unexplained=int((flips & (margin > 2 * difference)).sum()),
        max_logit_difference=difference,
        batch_norms_left=len(batch_norm_layers(fused)),
        unfused_seconds=unfused,
        fused_seconds=fused_time,
    )


# ============================================================================ experiment
@dataclass(frozen=True)
class TrainEvalConfig:
    """Settings of the train/eval experiment (defaults: the study's budget)."""

    momenta: tuple[float, ...] = (0.01, 0.1, 0.5)  # running averages followed (torch's 0.1)
    precise_batches: int = 100  # training batches of the precise statistics
    finetune_arms: tuple[str, ...] = tuple(FINETUNE_ARMS)
    finetune_subset: int = 1_000  # the last training images, shifted, to fine-tune on
    finetune_batch_size: int = 2
    finetune_epochs: int = 1
    finetune_lr: float = 0.003  # about the pre-training's 0.03 scaled by 2 / 64, x3
    inference_batch_size: int = 256
    timing_repeats: int = 10
    seeds: int = 5
    epochs: int = 3
    dataset: str = "fashion-mnist"
    train_subset: int | None = 10_000
    test_subset: int | None = 2_000
    lr: float = 0.03  # the tutorial's
    momentum: float = 0.9  # SGD's
    batch_size: int = 64
    activation: str = "sigmoid"
    device: str = "cpu"

    def validate(self) -> None:
        if isinstance(self.momenta, str) or not self.momenta:
            raise UsageError(f"momenta must be a non-empty list, got {self.momenta!r}")
        for m in self.momenta:
            if isinstance(m, bool) or not isinstance(m, int | float) or not 0 < m <= 1:
                raise UsageError(f"every batch-norm momentum must be in (0, 1], got {m!r}")
        if len(set(self.momenta)) != len(self.momenta):
            raise UsageError(f"momenta has repeats: {self.momenta}")
        check_choices("finetune_arms", self.finetune_arms, list(FINETUNE_ARMS))
        for name in ("precise_batches", "finetune_subset", "finetune_epochs", "timing_repeats",
                     "inference_batch_size"):  # fmt: skip
            check_positive_int(name, getattr(self, name))
        check_positive_int("finetune_batch_size", self.finetune_batch_size, 2)
        check_positive_int("batch_size", self.batch_size, 2)
        if not (isinstance(self.finetune_lr, int | float) and self.finetune_lr > 0):
            raise UsageError(f"finetune_lr must be a positive number, got {self.finetune_lr!r}")
        check_common(self)
        if self.train_subset is not None and self.finetune_subset >= self.train_subset:
            raise UsageError(
                f"finetune_subset {self.finetune_subset} leaves no image to pre-train on "
                f"(train_subset {self.train_subset})"
            )


@dataclass(frozen=True)
class StatisticsRuns:
    """Test accuracy after every epoch with each kind of statistics, across seeds."""

    epochs: list[int]
    batch_stats: Curve  # the test batches' own statistics (train mode)
    ema: dict[str, Curve]  # momentum ("0.1") -> the EMA's accuracy (eval mode)
    precise: Curve  # statistics recomputed with the epoch's weights
    final_batch_stats: SeedStats
    final_ema: dict[str, SeedStats]
    final_precise: SeedStats
    precise_minus_ema: dict[str, SeedStats]  # per seed, at the end, in accuracy


@dataclass(frozen=True)
class FusionStats:
    """The fused network against the unfused one, per seed."""

    examples: int
    disagreements: list[int]
    unexplained: list[int]
    max_logit_difference: SeedStats
    batch_norms_left: list[int]
    unfused_ms: SeedStats
    fused_ms: SeedStats
    speedup: SeedStats  # unfused / fused time


@dataclass(frozen=True)
class FinetuneStats:
    """Accuracy on the shifted test images before and after fine-tuning, per arm."""

    batch_size: int
    before: dict[str, SeedStats]
    after: dict[str, SeedStats]
    diverged: dict[str, int]


@dataclass(frozen=True)
class TrainEvalSummary:
    """The three parts; the momenta followed."""

    momenta: list[float]
    statistics: StatisticsRuns | None
    fusion: FusionStats | None
    finetune: FinetuneStats | None


class TrainEval(Experiment[TrainEvalConfig, TrainEvalSummary]):
    """Batch statistics, moving averages, precise statistics, frozen and fused batch norm."""

    name = "train-eval"
    title = "Train against eval"
    introduction = (
        "Batch norm normalises with the batch's statistics in training and with population "
        "statistics in evaluation. On the tutorial's BN-LeNet: test accuracy with the test "
        "batches' own statistics, with moving averages of several momenta (followed along "
        "the same run) and with statistics recomputed with the final weights (precise "
        "statistics); fine-tuning at 2 images per batch on held-out images at half the "
        "contrast with batch norm, frozen batch norm and group norm; and inference with "
        "the batch norms folded into the layers before them."
    )
    config_type = TrainEvalConfig
    summary_type = TrainEvalSummary
    command = ("sweep", "train-eval")
    options = (
        Option("--momenta", "momenta", "float-list",
               "momentum: BN momenta (default 0.01,0.1,0.5)", "A,B,..."),
        Option("--finetune-arms", "finetune_arms", "list",
               "train-eval: batch, frozen-batch, group (default all)", "A,B,..."),
        Option("--finetune-batch-size", "finetune_batch_size", "int>=2",
               "train-eval: images per fine-tuning batch (default 2)", "N"),
        Option("--lr", "lr", "float", "SGD learning rate (default 0.03)", "LR"),
    )  # fmt: skip

    def study_config(
        self, *, quick: bool, dataset: str, device: str, syncbn: bool
    ) -> TrainEvalConfig:
        if quick:
            return TrainEvalConfig(
                dataset=dataset, device=device, train_subset=2_000, test_subset=500, seeds=2,
                epochs=1, precise_batches=20, finetune_subset=200, timing_repeats=3,
            )  # fmt: skip
        return TrainEvalConfig(dataset=dataset, device=device)

    def models(self, config: TrainEvalConfig) -> tuple[str, ...]:
        del config
        return (LENET,)

    def cells(self, config: TrainEvalConfig) -> list[Cell]:
        """One cell per part x seed."""
        return [
            Cell(self.name, (("part", part),), seed, _cost(config, part))
            for part in PARTS
            for seed in seed_list(config.seeds)
        ]

    def run_cell(self, config: TrainEvalConfig, data: Dataset, cell: Cell) -> dict[str, Any]:
        if cell.params["part"] == "statistics":
            return _statistics_cell(config, data, cell.seed)
        return _finetune_cell(config, data, cell.seed)

    def summarize(
        self,
        config: TrainEvalConfig,
        cells: list[Cell],
        results: Mapping[str, Mapping[str, Any]],
    ) -> TrainEvalSummary:
        by_part = {
            part: [results[c.key] for c in cells if c.params["part"] == part] for part in PARTS
        }
        stats = by_part["statistics"]
        return TrainEvalSummary(
            momenta=[float(m) for m in config.momenta],
            statistics=_statistics_runs(config, stats) if stats else None,
            fusion=_fusion_stats(stats) if stats else None,
            finetune=_finetune_stats(config, by_part["finetune"]) if by_part["finetune"] else None,
        )

    def findings(self, summary: TrainEvalSummary) -> list[Finding]:
        return train_eval_findings(summary)

    def guide(self, summary: TrainEvalSummary) -> list[GuideRow]:
        return train_eval_guide(summary)

    def table(self, summary: TrainEvalSummary) -> TableSpec:
        from normlab.report import Column

        rows: list[dict[str, Any]] = []

        def row(what: str, accuracy: str | None, before: str | None = None,
                time: str | None = None) -> None:  # fmt: skip
            rows.append({"what": what, "accuracy": accuracy, "before": before, "time": time})

        if summary.statistics is not None:
            s = summary.statistics
            row("test batches' own statistics", pm(s.final_batch_stats))
            for key, stat in s.final_ema.items():
                row(f"moving average, momentum {key}", pm(stat))
            row("precise statistics", pm(s.final_precise))
        if summary.finetune is not None:
            f = summary.finetune
            for arm, after in f.after.items():
                row(f"fine-tuned at batch {f.batch_size}: {FINETUNE_LABELS[arm]} (shifted)",
                    pm(after), before=pm(f.before[arm]))  # fmt: skip
        if summary.fusion is not None:
            u = summary.fusion
            row(
                f"fused batch norms ({sum(u.disagreements)} disagreements, largest logit "
                f"difference {fmt3(u.max_logit_difference.mean or 0.0)})",
                None,
                time=f"{pm(u.unfused_ms, 1.0, 'ms')} -> {pm(u.fused_ms, 1.0, 'ms')}",
            )
        columns = [
            Column("what", "evaluated with"),
            Column("accuracy", "test accuracy", align="right"),
            Column("before", "before fine-tuning", align="right"),
            Column("time", "inference time (unfused -> fused)", align="right"),
        ]
        return TableSpec(rows, columns)

    def figures(self, summary: TrainEvalSummary) -> list[FigureSpec]:
        specs = []
        if summary.statistics is not None:
            specs.append(FigureSpec(
                "train-eval-statistics", statistics_figure(summary.statistics),
                "Test accuracy after every epoch with the test batches' own statistics, the "
                "moving averages of each momentum and precise statistics (mean ± std).",
            ))  # fmt: skip
        if summary.finetune is not None or summary.fusion is not None:
            specs.append(FigureSpec(
                "train-eval-finetune-fusion", finetune_fusion_figure(summary),
                "Left: accuracy on the shifted test images before and after fine-tuning at "
                "tiny batches (bars: mean, error bars: ±1 std, dots: seeds). Right: the speed-up "
                "of one inference pass over the test images with fused batch norms (per seed).",
            ))  # fmt: skip
        return specs


TRAIN_EVAL = TrainEval()


def _cost(config: TrainEvalConfig, part: str) -> float:
    """Estimated seconds of one cell; the statistics part doubles its training and
    evaluation estimate for the copies of the model and the precise passes."""
    examples = config.epochs * (config.train_subset or 60_000)
    tests = config.test_subset or 10_000
    if part == "statistics":
        evaluations = config.epochs * (len(config.momenta) + 2) * tests
        precise = config.epochs * config.precise_batches * config.batch_size
        timing = 2 * config.timing_repeats * tests
        training = estimate_seconds(examples, config.batch_size)
        return 2.0 * (training + eval_seconds(evaluations + precise + timing))
    pretrain = len({FINETUNE_ARMS[a] for a in config.finetune_arms})
    tune = config.finetune_epochs * config.finetune_subset * len(config.finetune_arms)
    return (
        pretrain * estimate_seconds(examples, config.batch_size, "group")
        + estimate_seconds(tune, config.finetune_batch_size)
        + eval_seconds(3 * tests * len(config.finetune_arms))
    )


def _key(momentum: float) -> str:
    return format_value(float(momentum))


# ------------------------------------------------------------------------------- cells
def _statistics_cell(config: TrainEvalConfig, data: Dataset, seed: int) -> dict[str, Any]:
    """Train BN-LeNet at batch 64 following the moving averages; after every epoch the
    accuracy with each kind of statistics; at the end the fused network."""
    from normlab.train.engine import EpochMetrics, build_model, fit

    train = train_config(config, norm="batch", seed=seed)
    model = build_model(train)
    averages = MovingAverages(model, config.momenta)
    epochs: list[dict[str, Any]] = []

    def measure(metrics: EpochMetrics) -> None:
        epochs.append(_accuracies(config, data, model, averages, metrics.epoch, seed))

    history = fit(model, data, train, progress=False, on_epoch=measure)
    averages.remove()
    record: dict[str, Any] = {"epochs": epochs, "diverged": bool(history.diverged)}
    if not history.diverged:
        fused = compare_fused(
            model, data.test_images, config.inference_batch_size, config.timing_repeats
        )
        record["fusion"] = dataclasses.asdict(fused) | {"examples": len(data.test_labels)}
    return record


def _accuracies(
    config: TrainEvalConfig,
    data: Dataset,
    model: nn.Module,
    averages: MovingAverages,
    epoch: int,
    seed: int,
) -> dict[str, Any]:
    from normlab.data import batches
    from normlab.nn import recompute_batch_norm_stats
    from normlab.train.engine import evaluate

    def accuracy(net: nn.Module) -> float:
        return evaluate(net, data.test_images, data.test_labels, device=config.device)[1]

    precise = copy.deepcopy(model)
    stream = batches(
        data.train_images, data.train_labels, config.batch_size, shuffle=True, seed=seed,
        epoch=10_000 + epoch, drop_last=True, device=config.device,
    )  # fmt: skip
    recompute_batch_norm_stats(precise, stream, num_batches=config.precise_batches)
    return {
        "epoch": epoch,
        "batch_stats": accuracy_with_batch_stats(
            model, data.test_images, data.test_labels, config.batch_size, device=config.device
        ),
        "ema": {_key(m): accuracy(averages.model_with(model, m)) for m in config.momenta},
        "precise": accuracy(precise),
    }


def _shifted(images: torch.Tensor) -> torch.Tensor:
    """Half the contrast, brighter: ``u // 2 + 100`` (uint8, 100..227)."""
    return images // 2 + 100


def _finetune_cell(config: TrainEvalConfig, data: Dataset, seed: int) -> dict[str, Any]:
    """Pre-train at batch 64 on all but the last ``finetune_subset`` training images;
    fine-tune each arm at ``finetune_batch_size`` on their shifted versions; accuracy on
    the shifted test images before and after."""
    from normlab.train.engine import build_model, evaluate, fit

    count = len(data.train_labels) - config.finetune_subset
    if count < 2:
        raise UsageError(
            f"finetune_subset {config.finetune_subset} leaves no image to pre-train on"
        )
    pretrain_data = data.subset(train=count)
    shifted = dataclasses.replace(
        data,
        train_images=_shifted(data.train_images[count:]),
        train_labels=data.train_labels[count:],
        test_images=_shifted(data.test_images),
    )
    pretrained = {}
    for norm in dict.fromkeys(FINETUNE_ARMS[a] for a in config.finetune_arms):
        train = train_config(config, norm=norm, seed=seed)
        model = build_model(train)
        history = fit(model, pretrain_data, train, progress=False)
        pretrained[norm] = (model, bool(history.diverged))
    tune = train_config(
        config, norm="batch", seed=seed, batch_size=config.finetune_batch_size,
        lr=config.finetune_lr, epochs=config.finetune_epochs,
        train_subset=None, test_subset=None,
    )  # fmt: skip
    arms = {}
    for arm in config.finetune_arms:
        source, diverged = pretrained[FINETUNE_ARMS[arm]]
        model = copy.deepcopy(source)
        before = (
            None
            if diverged
            else evaluate(model, shifted.test_images, shifted.test_labels, device=config.device)[1]
        )
        if arm == "frozen-batch":
            freeze_every_batch_norm(model)
        history = fit(model, shifted, tune, progress=False) if not diverged else None
        final = history.final if history is not None and not history.diverged else None
        arms[arm] = {
            "before": before,
            "after": final.test_accuracy if final is not None else None,
            "diverged": final is None,
        }
    return {"arms": arms}


# ---------------------------------------------------------------------------- summaries
def _statistics_runs(config: TrainEvalConfig, runs: Sequence[Mapping[str, Any]]) -> StatisticsRuns:
    common = min(len(r["epochs"]) for r in runs)
    epochs = [[e for e in r["epochs"][:common]] for r in runs]

    def curve(read: Callable[..., float]) -> Curve:
        return curve_mean_std([[read(e) for e in seed] for seed in epochs])

    def final(read: Callable[..., float | None]) -> SeedStats:
        return seed_stats([read(seed[-1]) if seed else None for seed in epochs])

    keys = [_key(m) for m in config.momenta]
    return StatisticsRuns(
        epochs=[e["epoch"] for e in epochs[0]] if epochs else [],
        batch_stats=curve(lambda e: e["batch_stats"]),
        ema={k: curve(lambda e, k=k: e["ema"][k]) for k in keys},
        precise=curve(lambda e: e["precise"]),
        final_batch_stats=final(lambda e: e["batch_stats"]),
        final_ema={k: final(lambda e, k=k: e["ema"][k]) for k in keys},
        final_precise=final(lambda e: e["precise"]),
        precise_minus_ema={k: final(lambda e, k=k: e["precise"] - e["ema"][k]) for k in keys},
    )


def _fusion_stats(runs: Sequence[Mapping[str, Any]]) -> FusionStats | None:
    fused = [r["fusion"] for r in runs if "fusion" in r]
    if not fused:
        return None
    return FusionStats(
        examples=int(fused[0]["examples"]),
        disagreements=[int(f["disagreements"]) for f in fused],
        unexplained=[int(f["unexplained"]) for f in fused],
        max_logit_difference=seed_stats([f["max_logit_difference"] for f in fused]),
        batch_norms_left=[int(f["batch_norms_left"]) for f in fused],
        unfused_ms=seed_stats([1000 * f["unfused_seconds"] for f in fused]),
        fused_ms=seed_stats([1000 * f["fused_seconds"] for f in fused]),
        speedup=seed_stats([f["unfused_seconds"] / f["fused_seconds"] for f in fused]),
    )


def _finetune_stats(config: TrainEvalConfig, runs: Sequence[Mapping[str, Any]]) -> FinetuneStats:
    arms = list(config.finetune_arms)
    return FinetuneStats(
        batch_size=config.finetune_batch_size,
        before={a: seed_stats([r["arms"][a]["before"] for r in runs]) for a in arms},
        after={a: seed_stats([r["arms"][a]["after"] for r in runs]) for a in arms},
        diverged={a: sum(bool(r["arms"][a]["diverged"]) for r in runs) for a in arms},
    )


# ================================================================================ findings
def _compare(diff: SeedStats | None, a: SeedStats, b: SeedStats) -> tuple[float, float]:
    """``(a - b, spread)`` in points: the difference of the means and the larger std (or
    the std of the paired per-seed differences when given)."""
    assert a.mean is not None and b.mean is not None
    spread = diff.std if diff is not None and diff.std is not None else max(a.std or 0, b.std or 0)
    return 100 * (a.mean - b.mean), 100 * spread


def _verdict(difference: float, spread: float) -> str:
    """AGREES when the claimed better one wins by more than the spread, DISAGREES when it
    loses by more, INCONCLUSIVE within it."""
    if abs(difference) <= spread:
        return INCONCLUSIVE
    return AGREES if difference > 0 else DISAGREES


def train_eval_findings(summary: TrainEvalSummary) -> list[Finding]:
    """Precise against moving averages, fine-tuning at tiny batches, fusion."""
    findings: list[Finding] = []
    if summary.statistics is not None:
        findings += _statistics_findings(summary.statistics)
    if summary.finetune is not None:
        findings += _finetune_findings(summary.finetune)
    if summary.fusion is not None:
        findings += _fusion_findings(summary.fusion)
    return findings


def _statistics_findings(s: StatisticsRuns) -> list[Finding]:
    if s.final_precise.mean is None or s.final_batch_stats.mean is None:
        return []
    done = {k: v for k, v in s.final_ema.items() if v.mean is not None}
    gaps = {k: _compare(s.precise_minus_ema[k], s.final_precise, v) for k, v in done.items()}
    worse = [k for k, (d, sp) in gaps.items() if d < -sp]
    better = [k for k, (d, sp) in gaps.items() if d > sp]
    verdict = DISAGREES if worse else AGREES if better else INCONCLUSIVE
    emas = ", ".join(f"momentum {k}: {fmt_pm(v)}" for k, v in done.items())
    diffs = ", ".join(f"{d:+.1f} ± {sp:.1f}" for d, sp in gaps.values())
    epochs = len(s.epochs)
    return [
        Finding(
            "train-eval",
            f"After {epochs} epoch{'s' if epochs != 1 else ''}, the test batches' own "
            f"statistics give {fmt_pm(s.final_batch_stats)}; the moving averages {emas}; "
            f"precise statistics {fmt_pm(s.final_precise)} (precise minus each moving "
            f"average, per seed: {diffs} points).",
            claim=(
                "Wu & Johnson (2021, section 3) find that moving averages, taken over weights "
                "that kept changing, estimate the population statistics worse than statistics "
                "recomputed with the final weights (precise BN), most when the weights move "
                "fast."
            ),
            verdict=verdict,
            numbers={
                "batch_stats": pct(s.final_batch_stats.mean),
                "precise": pct(s.final_precise.mean),
                **{f"ema_{k}": pct(v.mean) for k, v in done.items()},
            },
        )
    ]


def _finetune_findings(f: FinetuneStats) -> list[Finding]:
    after = {a: s for a, s in f.after.items() if s.mean is not None}
    findings = []
    if "batch" in after and "group" in after:
        diff, spread = _compare(None, after["group"], after["batch"])
        wu = WU_HE_BATCH2_ERROR
        findings.append(Finding(
            "train-eval",
            f"Fine-tuned at {f.batch_size} images per batch on the shifted images, group norm "
            f"reaches {fmt_pm(after['group'])} and batch norm {fmt_pm(after['batch'])} on the "
            f"shifted test images: {diff:+.1f} points (seed spread {spread:.1f}).",
            claim=(
                f"Wu & He (2018) report ImageNet top-1 errors of {wu['group']} % with group "
                f"norm against {wu['batch']} % with batch norm at 2 images per GPU (ResNet-50)."
            ),
            verdict=_verdict(diff, spread),
            numbers={"group": pct(after["group"].mean), "batch": pct(after["batch"].mean),
                     "difference": round(diff, 1), "spread": round(spread, 1)},
        ))  # fmt: skip
    if "batch" in after and "frozen-batch" in after:
        diff, spread = _compare(None, after["frozen-batch"], after["batch"])
        findings.append(Finding(
            "train-eval",
            f"Frozen batch norm (the pre-trained statistics and affine, fixed) reaches "
            f"{fmt_pm(after['frozen-batch'])} after the same fine-tuning, against batch "
            f"norm's {fmt_pm(after['batch'])}: {diff:+.1f} points (seed spread {spread:.1f}).",
            claim=(
                "Detection and segmentation systems fine-tune with frozen batch norm because "
                "1-2 images per GPU make batch statistics unusable (Wu & He 2018, section 6; "
                "torchvision's and detectron2's FrozenBatchNorm2d)."
            ),
            verdict=_verdict(diff, spread),
            numbers={"frozen": pct(after["frozen-batch"].mean), "batch": pct(after["batch"].mean),
                     "difference": round(diff, 1), "spread": round(spread, 1)},
        ))  # fmt: skip
    return findings


def _fusion_findings(u: FusionStats) -> list[Finding]:
    if u.max_logit_difference.mean is None or u.speedup.mean is None:
        return []
    seeds = len(u.disagreements)
    exact = sum(u.unexplained) == 0 and sum(u.batch_norms_left) == 0
    speed = u.speedup
    assert speed.mean is not None
    gain = speed.mean - 1.0
    return [
        Finding(
            "train-eval",
            f"With its batch norms folded into the layers before them, BN-LeNet predicts "
            f"{sum(u.disagreements)} of {seeds} x {u.examples} test images differently "
            f"({sum(u.unexplained)} beyond a near-tie); the largest logit difference is "
            f"{fmt3(u.max_logit_difference.mean)} (mean over seeds).",
            claim=(
                "Folding an evaluation-mode batch norm into the convolution or linear layer "
                "before it gives the same function up to rounding (Jacob et al. 2018 fold it "
                "for integer inference; torch.nn.utils.fusion)."
            ),
            verdict=AGREES if exact else DISAGREES,
            numbers={
                "disagreements": float(sum(u.disagreements)),
                "unexplained": float(sum(u.unexplained)),
            },
        ),
        Finding(
            "train-eval",
            f"One pass over the {u.examples} test images took {fmt_pm_ms(u.unfused_ms)} "
            f"unfused and {fmt_pm_ms(u.fused_ms)} fused (best of the repeats): a speed-up of "
            f"{fmt3(speed.mean)}x (seed spread {fmt3(speed.std or 0.0)}).",
            claim="Fusion removes one pass over the activations per folded batch norm.",
            verdict=_verdict(gain, speed.std or 0.0),
            numbers={"speedup": float(fmt3(speed.mean))},
        ),
    ]


def fmt_pm_ms(stat: SeedStats) -> str:
    """``"12.3 ± 0.4 ms"``."""
    assert stat.mean is not None
    if stat.n > 1 and stat.std is not None:
        return f"{stat.mean:.1f} ± {stat.std:.1f} ms"
    return f"{stat.mean:.1f} ms"


# =================================================================================== guide
def train_eval_guide(summary: TrainEvalSummary) -> list[GuideRow]:
    """The guide's rows: fine-tuning with tiny batches, and inference."""
    rows = []
    if summary.finetune is not None:
        rows += _finetune_row(summary.finetune)
    if summary.fusion is not None:
        rows += _inference_row(summary.fusion, summary.statistics)
    return rows


def _finetune_row(f: FinetuneStats) -> list[GuideRow]:
    done = {arm: stat for arm, stat in f.after.items() if stat.mean is not None}
    if len(done) < 2:
        return []
    best = leaders(done)
    if len(best) == len(done):
        verdict = INCONCLUSIVE
    elif "batch" not in best:
        verdict = AGREES
    else:
        verdict = DISAGREES if best == ["batch"] else INCONCLUSIVE
    wu = WU_HE_BATCH2_ERROR
    return [
        GuideRow(
            situation=FINE_TUNING,
            recommendation=recommendation_text(best, FINETUNE_LABELS.__getitem__, len(done)),
            evidence=f"Fine-tuned at {f.batch_size} images per batch on shifted images: "
            + "; ".join(
                f"{FINETUNE_LABELS[arm]} {fmt_pm(stat)}"
                + (f" (from {fmt_pm(f.before[arm])})" if f.before[arm].mean is not None else "")
                for arm, stat in done.items()
            )
            + ".",
            literature=(
                f"Wu & He (2018): at 2 images per GPU, {wu['group']} % ImageNet top-1 error "
                f"with group norm against {wu['batch']} % with batch norm; detection "
                "fine-tunes with frozen batch norm"
            ),
            verdict=verdict,
        )
    ]


def _inference_row(u: FusionStats, statistics: StatisticsRuns | None) -> list[GuideRow]:
    findings = _fusion_findings(u)
    if len(findings) != 2:
        return []
    same, faster = findings
    assert u.speedup.mean is not None and u.max_logit_difference.mean is not None
    if same.verdict == DISAGREES:
        recommendation = "keep batch norm unfused: the fused predictions differ beyond rounding"
        verdict = DISAGREES
    elif faster.verdict == AGREES:
        recommendation = "batch norm folded into the layer before it (fuse_batch_norms)"
        verdict = AGREES
    elif faster.verdict == DISAGREES:
        recommendation = (
            "batch norm unfused: fused batch norm predicts the same but ran slower here, by "
            "more than the timing spread"
        )
        verdict = DISAGREES
    else:
        recommendation = (
            "inconclusive: fused batch norm predicts the same, but its speed-up is not "
            "separated from the timing spread"
        )
        verdict = INCONCLUSIVE
    evidence = (
        f"{sum(u.disagreements)} of {len(u.disagreements) * u.examples} predictions differ "
        f"({sum(u.unexplained)} beyond a near-tie), largest logit difference "
        f"{fmt3(u.max_logit_difference.mean)}; one pass over {u.examples} images "
        f"{fmt_pm_ms(u.unfused_ms)} unfused, {fmt_pm_ms(u.fused_ms)} fused "
        f"({fmt3(u.speedup.mean)}x)"
    )
    if statistics is not None and statistics.final_precise.mean is not None:
        emas = "; ".join(
            f"moving average (momentum {k}) {fmt_pm(v)}"
            for k, v in statistics.final_ema.items()
            if v.mean is not None
        )
        evidence += f"; evaluated with precise statistics {fmt_pm(statistics.final_precise)}, "
        evidence += emas
    return [
        GuideRow(
            situation=INFERENCE,
            recommendation=recommendation,
            evidence=evidence + ".",
            literature=(
                "Jacob et al. (2018) fold batch norm into the convolution for inference; "
                "torch.nn.utils.fusion: the same function up to rounding"
            ),
            verdict=verdict,
        )
    ]


# ================================================================================= figures
def statistics_figure(s: StatisticsRuns) -> Figure:
    """Accuracy per epoch with each kind of statistics (mean ± std band)."""
    from normlab.report.plots import new_figure, plot_lines, style

    series = {"test batches' statistics": 100 * np.asarray(s.batch_stats.values)}
    for key, curve in s.ema.items():
        series[f"moving average, m={key}"] = 100 * np.asarray(curve.values)
    series["precise statistics"] = 100 * np.asarray(s.precise.values)
    with style():
        fig, (ax,) = new_figure(width=7.5, height=4.5)
        plot_lines(ax, np.asarray(s.epochs, dtype=np.float64), series)
        ax.set_xticks(s.epochs)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Which statistics in evaluation?")
        ax.legend(fontsize=8)
    return fig


def finetune_fusion_figure(summary: TrainEvalSummary) -> Figure:
    """Fine-tuning accuracy per arm before/after (left) and the fusion's speed-up (right)."""
    from normlab.report.plots import PALETTE, new_figure, style

    with style():
        fig, (tune_ax, time_ax) = new_figure(ncols=2, width=12.5, height=4.5)
        if summary.finetune is not None:
            f = summary.finetune
            for i, arm in enumerate(f.after):
                for offset, stat, alpha in ((-0.2, f.before[arm], 0.4), (0.2, f.after[arm], 0.9)):
                    _bar(tune_ax, i + offset, stat, PALETTE[i % len(PALETTE)], alpha)
            tune_ax.set_xticks(range(len(f.after)), list(f.after))
            tune_ax.set_ylabel("accuracy on shifted test images (%)")
            tune_ax.set_title(f"Before (light) and after fine-tuning at batch {f.batch_size}")
        if summary.fusion is not None:
            u = summary.fusion
            _bar(time_ax, 0, u.speedup, PALETTE[0], 0.85, scale=1.0)
            time_ax.axhline(1.0, color="grey", ls=":", lw=1)
            time_ax.set_xticks([0], ["fused"])
            time_ax.set_xlim(-1, 1)
            time_ax.set_ylabel("speed-up: unfused time / fused time")
            time_ax.set_title(f"Inference over {u.examples} images, best of the repeats")
    return fig


def _bar(
    ax: Axes, x: float, stat: SeedStats, color: str, alpha: float, scale: float = 100.0
) -> None:
    values = [scale * v for v in stat.values if v is not None and math.isfinite(v)]
    if not values:
        return
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    ax.bar(x, mean, width=0.38, color=color, alpha=alpha)
    if len(values) > 1:
        ax.errorbar(x, mean, yerr=std, color="black", capsize=3, lw=1)
    ax.scatter([x] * len(values), values, s=10, color="black", zorder=3)
