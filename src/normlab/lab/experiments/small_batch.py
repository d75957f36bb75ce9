"""Micro-batches and non-i.i.d. batches: the layers built for them against batch norm.

Batch norm takes its statistics from the batch: with 2 images they are noise, and with a
batch of two classes they describe those two classes, not the data. The family of layers
made for that case is trained here on the same LeNet, every arm on the same number of
examples at each batch size (2, 4, ... 64; smaller batches take more steps) with the
learning rate scaled linearly with the batch size (Goyal et al. 2017; as the batch-size
sweep of :mod:`normlab.lab.experiments.sweep_batch_size`, which this extends):

- ``batch``: batch norm; ``renorm``: batch renorm (Ioffe 2017, ``rmax=3``, ``dmax=5``);
  ``ghost``: ghost batch norm over chunks of 16 (Hoffer et al. 2017; batch norm exactly at
  16 images or fewer);
- ``group``: group norm; ``group-ws``: group norm with weight-standardized convolutions
  (Qiao et al. 2019); ``frn``: filter response norm with its TLU (Singh & Krishnan 2020);
  ``evonorm-s0``: EvoNorm-S0 (Liu et al. 2020) -- these four never look across the batch.

Two samplings: *i.i.d.* batches (a random permutation of the training images cut into
batches) and *two-class* batches (:func:`normlab.data.two_class_batches.two_class_batches`:
half of each batch from each of two classes, every image at most once per epoch). Both run
through the same training loop (:func:`train_on_batches`: SGD with momentum on the
cross-entropy, as ``normlab.train.engine.fit``), and every model is tested twice: in eval
mode (running statistics, as deployed) and with the statistics of i.i.d. test batches of
its training batch size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from normlab.errors import UsageError
from normlab.lab.cells import Cell, estimate_seconds, eval_seconds, seed_list
from normlab.lab.common import (
    LENET,
    accuracy_with_batch_stats,
    check_choices,
    check_common,
    check_positive_int,
    downsample,
    pm,
    seed_stats,
    train_config,
)
from normlab.lab.experiment import Experiment, FigureSpec, Option, SeedStats, TableSpec
from normlab.lab.figures import finite_rows, percent
from normlab.lab.guide import MICRO_BATCHES, NON_IID, GuideRow, leaders, recommendation_text
from normlab.lab.verdicts import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    Finding,
    fmt_pm,
    label,
    pct,
)

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import nn

    from normlab.data import Dataset
    from normlab.train.config import TrainConfig

__all__ = [
    "IID",
    "NORMS",
    "SAMPLINGS",
    "SMALL_BATCH",
    "TWO_CLASS",
    "SmallBatch",
    "SmallBatchConfig",
    "SmallBatchPoint",
    "SmallBatchSummary",
    "iid_batches",
    "small_batch_findings",
    "small_batch_guide",
    "train_on_batches",
]

NORMS = ("batch", "renorm", "ghost", "group", "group-ws", "frn", "evonorm-s0")
IID, TWO_CLASS = "iid", "two-class"
SAMPLINGS = (IID, TWO_CLASS)
COST_FACTOR = {"renorm": 1.2, "ghost": 1.2, "group-ws": 1.5, "frn": 1.4, "evonorm-s0": 1.8}
MATCH_MARGIN_POINTS = 1.0  # "matches": within 1 point of test accuracy
MOST = 0.5  # "recovers most of the loss": at least half of it
NORM_LABELS = {  # the family's names in sentences (verdicts.label knows torch.nn's)
    "renorm": "batch renorm",
    "ghost": "ghost batch norm",
    "group-ws": "group norm + WS",
    "frn": "FRN",
    "evonorm-s0": "EvoNorm-S0",
}


def norm_label(norm: str) -> str:
    """A norm's name in a sentence: ``"batch renorm"``, ``"group norm + WS"``."""
    return NORM_LABELS.get(norm, label(norm))


@dataclass(frozen=True)
class SmallBatchConfig:
    """Settings of the small-batch experiment (defaults: the study's budget)."""

    norms: tuple[str, ...] = NORMS
    batch_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64)  # i.i.d. batches
    non_iid_batch_sizes: tuple[int, ...] = (32,)  # two-class batches (Ioffe 2017: 32)
    seeds: int = 3
    epochs: int = 1  # every batch size sees epochs x train_subset examples
    dataset: str = "fashion-mnist"
    train_subset: int | None = 4_096  # a multiple of every batch size: no ragged batch
    test_subset: int | None = 1_000
    lr: float = 0.02  # at base_batch_size, scaled linearly (0.1 stalls FRN, renorm: docs)
    base_batch_size: int = 32
    momentum: float = 0.9
    activation: str = "relu"  # as the batch-size sweep (Wu & He's ResNets)
    device: str = "cpu"

    def validate(self) -> None:
        from normlab.data.two_class_batches import check_two_class_batch_size
        from normlab.nn.registry import norm_names

        check_choices("norms", self.norms, norm_names())
        for what, sizes in (("batch_sizes", self.batch_sizes),
                            ("non_iid_batch_sizes", self.non_iid_batch_sizes)):  # fmt: skip
            if isinstance(sizes, str) or len(set(sizes)) != len(sizes):
                raise UsageError(f"{what} must be a list without repeats, got {sizes!r}")
            for size in sizes:
                check_positive_int(f"every entry of {what}", size, 2)
        if not self.batch_sizes:
            raise UsageError("batch_sizes must not be empty: the i.i.d. batches are the baseline")
        for size in self.non_iid_batch_sizes:
            try:
                check_two_class_batch_size(size)
            except ValueError as error:
                raise UsageError(f"non_iid_batch_sizes: {error}") from None
        check_positive_int("base_batch_size", self.base_batch_size)
        check_common(self)

    def lr_for(self, batch_size: int) -> float:
        """``lr * B / base_batch_size`` (Goyal et al. 2017's linear scaling)."""
        return float(self.lr) * batch_size / self.base_batch_size


@dataclass(frozen=True)
class SmallBatchPoint:
    """Every seed of one norm at one batch size and sampling."""

    batch_size: int
    lr: float
    steps: list[int]  # per seed
    eval_accuracy: SeedStats  # running statistics (eval mode)
    batch_stats_accuracy: SeedStats  # statistics of i.i.d. test batches of batch_size
    diverged: int
    seeds: int


@dataclass(frozen=True)
class SmallBatchSummary:
    """Per sampling (``iid``, ``two-class``) and norm, its points in batch-size order."""

    points: dict[str, dict[str, list[SmallBatchPoint]]]
    examples_seen: int | None
    chance: float | None


class SmallBatch(Experiment[SmallBatchConfig, SmallBatchSummary]):
    """Every norm at every batch size, i.i.d. and two-class, for every seed."""

    name = "small-batch"
    title = "Micro-batches and non-i.i.d. batches"
    introduction = (
        "Batch norm, batch renorm, ghost batch norm, group norm, group norm with weight "
        "standardization, FRN and EvoNorm-S0 on the same LeNet (ReLU), every arm trained on "
        "the same number of examples at each batch size (smaller batches take more steps) "
        "with the learning rate scaled linearly with the batch size; then with two-class "
        "batches, half of each batch from each of two classes, as metric learning samples "
        "them. Accuracy in eval mode uses the running statistics, as a deployed model does; "
        "the batch-statistics accuracy normalises i.i.d. test batches of the training batch "
        "size by their own statistics."
    )
    config_type = SmallBatchConfig
    summary_type = SmallBatchSummary
    command = ("sweep", "small-batch")
    options = (
        Option("--norms", "norms", "list",
               "small-batch: norms (default batch,renorm,ghost,group,group-ws,frn,evonorm-s0)",
               "A,B,..."),
        Option("--batch-sizes", "batch_sizes", "int-list",
               "small-batch: i.i.d. batch sizes (default 2,4,...,64)", "A,B,..."),
        Option("--non-iid-batch-sizes", "non_iid_batch_sizes", "int-list",
               "small-batch: two-class batch sizes, even (default 32)", "A,B,..."),
        Option("--lr", "lr", "float", "the SGD learning rate at 32 images per batch", "LR"),
    )  # fmt: skip

    def study_config(
        self, *, quick: bool, dataset: str, device: str, syncbn: bool
    ) -> SmallBatchConfig:
        del syncbn
        if quick:
            return SmallBatchConfig(
                dataset=dataset, device=device, norms=("batch", "renorm", "group-ws", "frn"),
                batch_sizes=(4, 32), non_iid_batch_sizes=(32,), seeds=2, train_subset=512,
                test_subset=500,
            )  # fmt: skip
        return SmallBatchConfig(dataset=dataset, device=device)

    def models(self, config: SmallBatchConfig) -> tuple[str, ...]:
        del config
        return (LENET,)

    def cells(self, config: SmallBatchConfig) -> list[Cell]:
        """One cell per norm x (sampling, batch size) x seed."""
        examples = config.epochs * (config.train_subset or 60_000)
        tests = config.test_subset or 10_000

        def cost(norm: str, size: int) -> float:
            train = COST_FACTOR.get(norm, 1.0) * estimate_seconds(examples, size, norm)
            return train + eval_seconds(tests) + estimate_seconds(tests, size) / 3

        return [
            Cell(self.name, (("norm", norm), ("sampling", sampling), ("batch_size", size)),
                 seed, cost(norm, size))
            for norm in config.norms
            for sampling, sizes in _samplings(config)
            for size in sizes
            for seed in seed_list(config.seeds)
        ]  # fmt: skip

    def run_cell(self, config: SmallBatchConfig, data: Dataset, cell: Cell) -> dict[str, Any]:
        """Train one LeNet on ``cell``'s batches; its accuracy in eval mode and with the
        statistics of test batches of its batch size."""
        from normlab.train.engine import build_model

        norm, sampling = cell.params["norm"], cell.params["sampling"]
        size = int(cell.params["batch_size"])
        train = train_config(config, norm=norm, batch_size=size, lr=config.lr_for(size),
                             seed=cell.seed)  # fmt: skip
        model = build_model(train)
        order = sampler(sampling, data.train_labels, size, cell.seed)
        record = train_on_batches(model, data, train, order)
        record["batch_stats_accuracy"] = (
            None
            if record["final"] is None
            else accuracy_with_batch_stats(model, data.test_images, data.test_labels, size,
                                           device=train.device)
        )  # fmt: skip
        record["chance"] = 1.0 / len(data.classes)
        return record

    def summarize(
        self, config: SmallBatchConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
    ) -> SmallBatchSummary:
        """Per sampling, norm and batch size: accuracy in eval mode and with batch statistics."""
        points: dict[str, dict[str, list[SmallBatchPoint]]] = {}
        for sampling, sizes in _samplings(config):
            if not sizes:
                continue
            points[sampling] = {
                norm: [_point(config, size, [results[c.key] for c in cells
                                             if c.params == {"norm": norm, "sampling": sampling,
                                                             "batch_size": size}])
                       for size in sizes]
                for norm in config.norms
            }  # fmt: skip
        first = next(iter(results.values()), None)
        return SmallBatchSummary(
            points=points,
            examples_seen=config.epochs * config.train_subset if config.train_subset else None,
            chance=None if first is None else first["chance"],
        )

    def findings(self, summary: SmallBatchSummary) -> list[Finding]:
        return small_batch_findings(summary)

    def guide(self, summary: SmallBatchSummary) -> list[GuideRow]:
        return small_batch_guide(summary)

    def table(self, summary: SmallBatchSummary) -> TableSpec:
        from normlab.report import Column

        rows = [
            {"norm": norm, "sampling": sampling, "batch_size": p.batch_size, "lr": p.lr,
             "steps": p.steps[0] if p.steps else None, "eval": pm(p.eval_accuracy),
             "batch": pm(p.batch_stats_accuracy), "diverged": f"{p.diverged}/{p.seeds}"}
            for sampling, norms in summary.points.items()
            for norm, points in norms.items()
            for p in points
        ]  # fmt: skip
        columns = [
            Column("norm"), Column("sampling"), Column("batch_size", "batch"),
            Column("lr", "lr", fmt=".4g"), Column("steps"),
            Column("eval", "eval-mode accuracy", align="right"),
            Column("batch", "batch-stats accuracy", align="right"),
            Column("diverged", align="right"),
        ]  # fmt: skip
        return TableSpec(rows, columns)

    def figures(self, summary: SmallBatchSummary) -> list[FigureSpec]:
        caption = (
            "Eval-mode test accuracy against the batch size at a fixed number of examples "
            "seen (left: i.i.d. batches), and with two-class batches next to i.i.d. ones of "
            "the same size (right)."
        )
        return [FigureSpec("small-batch", small_batch_figure(summary), caption)]


SMALL_BATCH = SmallBatch()


def _samplings(config: SmallBatchConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return ((IID, tuple(config.batch_sizes)), (TWO_CLASS, tuple(config.non_iid_batch_sizes)))


def _point(
    config: SmallBatchConfig, size: int, runs: Sequence[Mapping[str, Any]]
) -> SmallBatchPoint:
    return SmallBatchPoint(
        batch_size=size,
        lr=config.lr_for(size),
        steps=[int(r["steps"]) for r in runs],
        eval_accuracy=seed_stats(
            [None if r["final"] is None else r["final"]["test_accuracy"] for r in runs]
        ),
        batch_stats_accuracy=seed_stats([r["batch_stats_accuracy"] for r in runs]),
        diverged=sum(bool(r["diverged"]) for r in runs),
        seeds=len(runs),
    )


# ================================================================================ training
def iid_batches(count: int, batch_size: int, *, seed: int, epoch: int) -> list[torch.Tensor]:
    """One epoch of i.i.d. batches: ``epoch_order`` (a permutation drawn from ``(seed,
    epoch)``) cut into batches of ``batch_size``; a last incomplete batch is left out, as
    the two-class sampler leaves out what does not fill a batch."""
    from normlab.data import epoch_order

    order = epoch_order(count, shuffle=True, seed=seed, epoch=epoch)
    full = count - count % batch_size
    return list(order[:full].split(batch_size))


def sampler(
    sampling: str, labels: torch.Tensor, batch_size: int, seed: int
) -> Callable[[int], list[torch.Tensor]]:
    """``epoch -> the epoch's batches`` (index tensors) for ``sampling``."""
    from normlab.data.two_class_batches import two_class_batches

    if sampling == IID:
        return lambda epoch: iid_batches(len(labels), batch_size, seed=seed, epoch=epoch)
    if sampling == TWO_CLASS:
        return lambda epoch: two_class_batches(labels, batch_size, seed=seed, epoch=epoch)
    raise UsageError(f"unknown sampling {sampling!r}; valid: {', '.join(SAMPLINGS)}")


def train_on_batches(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    batches: Callable[[int], list[torch.Tensor]],
    curve_points: int = 60,
) -> dict[str, Any]:
    """Train ``model`` with SGD with momentum (``normlab.train.engine.make_optimizer``) on
    the mean cross-entropy ``L = -1/B sum_i log softmax(f(x_i))[y_i]`` of each batch
    ``batches(epoch)`` gives, for ``config.epochs`` epochs; then test it in eval mode.

    Returns:
        ``steps``, ``diverged`` (a non-finite loss stopped training), ``loss_curve``
        (``[[mid_step, mean_loss], ...]``), ``train_seconds`` and ``final`` (``None`` when
        diverged, else ``{"test_accuracy", "test_loss"}``).
    """
    import torch
    import torch.nn.functional as F

    from normlab.data import normalize_images
    from normlab.train.engine import evaluate, make_optimizer

    optimizer = make_optimizer(model, config)
    model.train()
    losses: list[float] = []
    diverged = False
    start = time.perf_counter()
    for epoch in range(config.epochs):
        for index in batches(epoch):
            x = normalize_images(data.train_images[index].to(config.device))
            y = data.train_labels[index].to(config.device)
            loss = F.cross_entropy(model(x), y)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if diverged:
            break
    seconds = time.perf_counter() - start
    final = None
    if not diverged:
        with torch.no_grad():
            test_loss, test_accuracy = evaluate(model, data.test_images, data.test_labels,
                                                device=config.device)  # fmt: skip
        final = {"test_accuracy": test_accuracy, "test_loss": test_loss}
    return {
        "steps": len(losses),
        "diverged": diverged,
        "loss_curve": downsample([v for v in losses if math.isfinite(v)], curve_points),
        "train_seconds": seconds,
        "final": final,
    }


# ================================================================================ verdicts
def _std(stat: SeedStats) -> float:
    return stat.std if stat.std is not None else 0.0


def _at(summary: SmallBatchSummary, sampling: str, norm: str, size: int) -> SeedStats | None:
    for p in summary.points.get(sampling, {}).get(norm, []):
        if p.batch_size == size and p.eval_accuracy.mean is not None:
            return p.eval_accuracy
    return None


def _ends(summary: SmallBatchSummary) -> tuple[int, int] | None:
    """The smallest and the largest i.i.d. batch size (None with fewer than two)."""
    sizes = sorted({p.batch_size for pts in summary.points.get(IID, {}).values() for p in pts})
    return (sizes[0], sizes[-1]) if len(sizes) >= 2 else None


def _two_class_sizes(summary: SmallBatchSummary) -> list[int]:
    return sorted({p.batch_size for pts in summary.points.get(TWO_CLASS, {}).values() for p in pts})


def recovery_verdict(gain: float, loss: float, gain_noise: float, loss_noise: float) -> str:
    """Whether a layer recovers most (:data:`MOST`) of batch norm's ``loss`` (points):
    inconclusive when the loss is within its seeds' spread (nothing to recover); agrees
    when ``gain - gain_noise >= MOST * loss``; disagrees when ``gain + gain_noise < MOST *
    loss``; inconclusive when the band straddles it."""
    if not loss > loss_noise:
        return INCONCLUSIVE
    if gain - gain_noise >= MOST * loss:
        return AGREES
    if gain + gain_noise < MOST * loss:
        return DISAGREES
    return INCONCLUSIVE


def match_or_beat_verdict(
    difference: float, noise: float, margin: float = MATCH_MARGIN_POINTS
) -> str:
    """A claim that one number matches (within ``margin`` points) or beats another:
    agrees when ``difference - noise >= -margin``, disagrees when ``difference + noise <
    -margin``, inconclusive in between."""
    if difference - noise >= -margin:
        return AGREES
    if difference + noise < -margin:
        return DISAGREES
    return INCONCLUSIVE


def independence_verdict(
    versus_control: float, control_noise: float, versus_batch: float, batch_noise: float
) -> str:
    """FRN's batch independence from the changes of accuracy going down to the smallest
    batch (points). ``versus_control``: FRN's change minus group norm's (the
    batch-independent control for what more, smaller steps change by themselves);
    ``versus_batch``: FRN's change minus batch norm's. Disagrees when FRN falls below the
    control by more than the spread; inconclusive when it rises above it by more than the
    spread (a change through the training itself, which says nothing of the batch);
    agrees when it fares better than batch norm by more than the spread; inconclusive
    otherwise."""
    if versus_control < -control_noise:
        return DISAGREES
    if versus_control > control_noise:
        return INCONCLUSIVE
    if versus_batch > batch_noise:
        return AGREES
    return INCONCLUSIVE


def _rss(*stats: SeedStats) -> float:
    """The spread of a sum or difference of independent measurements, in points:
    ``sqrt(sum std_i^2)``."""
    return pct(math.sqrt(math.fsum(_std(s) ** 2 for s in stats)))


# ================================================================================ findings
# Ioffe (2017), Inception-v3 top-1 on ImageNet validation as the paper reports it in its
# small-minibatch experiment: microbatch, BN %, renorm %, batch, BN %
IOFFE_MICRO = (4, 74.2, 76.5, 32, 78.3)
# ResNet-50 top-1 error, GN+WS, batch-independent so trained as with 1 image per GPU: the
# authors' ImageNet results table for their released models
QIAO_GN_WS = 23.72
WU_HE_BN_32 = 23.6  # ResNet-50 top-1 error, BN, 32 images per GPU (Wu & He 2018)


def small_batch_findings(summary: SmallBatchSummary) -> list[Finding]:
    """The change of every norm from the largest to the smallest batch, the two-class
    batches against i.i.d. ones, and the papers' claims with their verdicts."""
    findings = [_change_finding(summary), *_two_class_findings(summary),
                renorm_micro_finding(summary), renorm_non_iid_finding(summary),
                gn_ws_finding(summary), frn_finding(summary)]  # fmt: skip
    return [f for f in findings if f is not None]


def _change_finding(summary: SmallBatchSummary) -> Finding | None:
    ends = _ends(summary)
    if ends is None:
        return None
    small, large = ends
    parts, numbers = [], {}
    for norm in summary.points[IID]:
        a, b = _at(summary, IID, norm, large), _at(summary, IID, norm, small)
        if a is None or b is None:
            continue
        change = round(pct(b.mean) - pct(a.mean), 1)  # type: ignore[arg-type]
        parts.append(f"{norm_label(norm)} {fmt_pm(a)} -> {fmt_pm(b)} ({change:+.1f})")
        numbers[f"{norm}_large"], numbers[f"{norm}_small"] = pct(a.mean), pct(b.mean)  # type: ignore[arg-type]
        numbers[f"{norm}_change"] = change
    if not parts:
        return None
    return Finding(
        "small-batch",
        f"From {large} to {small} images per batch (i.i.d., eval mode): " + "; ".join(parts) + ".",
        numbers=numbers,
    )


def _two_class_findings(summary: SmallBatchSummary) -> list[Finding]:
    out = []
    for size in _two_class_sizes(summary):
        parts, numbers = [], {}
        for norm in summary.points[TWO_CLASS]:
            skewed, iid = _at(summary, TWO_CLASS, norm, size), _at(summary, IID, norm, size)
            if skewed is None:
                continue
            text = f"{norm_label(norm)} {fmt_pm(skewed)}"
            numbers[f"{norm}_two_class"] = pct(skewed.mean)  # type: ignore[arg-type]
            if iid is not None:
                text += f" (i.i.d. {fmt_pm(iid)})"
                numbers[f"{norm}_iid"] = pct(iid.mean)  # type: ignore[arg-type]
            parts.append(text)
        if parts:
            out.append(Finding(
                "small-batch",
                f"With two-class batches of {size} (eval mode): " + "; ".join(parts) + ".",
                numbers=numbers,
            ))  # fmt: skip
    return out


def renorm_micro_finding(summary: SmallBatchSummary) -> Finding | None:
    """Ioffe (2017): batch renorm recovers most of what batch norm loses at micro-batches."""
    ends = _ends(summary)
    if ends is None:
        return None
    small, large = ends
    big, tiny, renorm = (_at(summary, IID, "batch", large), _at(summary, IID, "batch", small),
                         _at(summary, IID, "renorm", small))  # fmt: skip
    if big is None or tiny is None or renorm is None:
        return None
    return _recovery_finding(
        big, tiny, renorm,
        f"Batch norm scores {fmt_pm(big)} with {large} images per batch and {fmt_pm(tiny)} "
        f"with {small}; batch renorm scores {fmt_pm(renorm)} with {small}",
        "Ioffe (2017) trains Inception-v3 on ImageNet with microbatches of "
        f"{IOFFE_MICRO[0]} and reports {IOFFE_MICRO[1]} % top-1 with batch norm, "
        f"{IOFFE_MICRO[2]} % with batch renorm, against {IOFFE_MICRO[4]} % with "
        f"{IOFFE_MICRO[3]}: batch renorm recovers "
        f"{_fraction(IOFFE_MICRO[2] - IOFFE_MICRO[1], IOFFE_MICRO[4] - IOFFE_MICRO[1])} % of "
        "batch norm's loss.",
    )  # fmt: skip


def renorm_non_iid_finding(summary: SmallBatchSummary) -> Finding | None:
    """Ioffe (2017): batch renorm recovers most of what batch norm loses with two-class
    batches (at the first two-class batch size that has every arm)."""
    for size in _two_class_sizes(summary):
        iid, skewed = _at(summary, IID, "batch", size), _at(summary, TWO_CLASS, "batch", size)
        renorm = _at(summary, TWO_CLASS, "renorm", size)
        if iid is None or skewed is None or renorm is None:
            continue
        return _recovery_finding(
            iid, skewed, renorm,
            f"With batches of {size}, batch norm scores {fmt_pm(iid)} i.i.d. and "
            f"{fmt_pm(skewed)} with two-class batches; batch renorm scores {fmt_pm(renorm)} "
            "with two-class batches",
            f"Ioffe (2017, section 4.3) trains Inception-v3 on ImageNet with batches of 32 "
            f"made of 16 classes x 2 images: batch norm falls far below the i.i.d. "
            f"{IOFFE_MICRO[4]} % top-1, batch renorm reaches about it.",
        )  # fmt: skip
    return None


def _fraction(gain: float, loss: float) -> int:
    return round(100 * gain / loss)


def _recovery_finding(
    reference: SeedStats, hurt: SeedStats, renorm: SeedStats, text: str, claim: str
) -> Finding:
    loss = round(pct(reference.mean) - pct(hurt.mean), 1)  # type: ignore[arg-type]
    gain = round(pct(renorm.mean) - pct(hurt.mean), 1)  # type: ignore[arg-type]
    loss_noise, gain_noise = round(_rss(reference, hurt), 1), round(_rss(renorm, hurt), 1)
    numbers = {"reference": pct(reference.mean), "hurt": pct(hurt.mean),  # type: ignore[arg-type]
               "renorm": pct(renorm.mean), "loss": loss, "gain": gain,  # type: ignore[arg-type]
               "loss_noise": loss_noise, "gain_noise": gain_noise}  # fmt: skip
    if loss > loss_noise:
        numbers["most"] = round(MOST * loss, 1)
        tail = f"; most of the loss is at least {numbers['most']:.1f} points"
    else:
        tail = "; batch norm's loss is within the spread: nothing to recover"
    return Finding(
        "small-batch",
        f"{text}: batch norm's change is {-loss:+.1f} points (spread {loss_noise:.1f}), batch "
        f"renorm's difference from batch norm {gain:+.1f} (spread {gain_noise:.1f}){tail}.",
        claim=claim,
        verdict=recovery_verdict(gain, loss, gain_noise, loss_noise),
        numbers=numbers,
    )


def gn_ws_finding(summary: SmallBatchSummary) -> Finding | None:
    """Qiao et al. (2019): group norm + WS at tiny batches matches batch norm at large ones."""
    ends = _ends(summary)
    if ends is None:
        return None
    small, large = ends
    ws, bn = _at(summary, IID, "group-ws", small), _at(summary, IID, "batch", large)
    if ws is None or bn is None:
        return None
    difference = round(pct(ws.mean) - pct(bn.mean), 1)  # type: ignore[arg-type]
    noise = round(_rss(ws, bn), 1)
    return Finding(
        "small-batch",
        f"Group norm + WS scores {fmt_pm(ws)} with {small} images per batch, batch norm "
        f"{fmt_pm(bn)} with {large}: a difference of {difference:+.1f} points (spread "
        f"{noise:.1f}; matching is within {MATCH_MARGIN_POINTS:.1f}).",
        claim=(
            "Qiao et al. (2019) train ResNet-50 with group norm and weight standardization at "
            f"1 image per GPU to {QIAO_GN_WS} % top-1 error on ImageNet, matching batch norm "
            f"with large batches ({WU_HE_BN_32} % at 32 images per GPU, Wu & He 2018)."
        ),
        verdict=match_or_beat_verdict(difference, noise),
        numbers={"ws": pct(ws.mean), "bn": pct(bn.mean), "difference": difference,  # type: ignore[arg-type]
                 "noise": noise, "margin": MATCH_MARGIN_POINTS},
    )  # fmt: skip


def frn_finding(summary: SmallBatchSummary) -> Finding | None:
    """Singh & Krishnan (2020): FRN is batch-independent; group norm (also batch-independent)
    is the control for what fewer, smaller steps change by themselves."""
    ends = _ends(summary)
    if ends is None:
        return None
    small, large = ends
    stats = {(n, s): _at(summary, IID, n, s) for n in ("frn", "group", "batch")
             for s in (small, large)}  # fmt: skip
    if any(v is None for v in stats.values()):
        return None

    def change(norm: str) -> float:
        return round(pct(stats[norm, small].mean) - pct(stats[norm, large].mean), 1)  # type: ignore[arg-type, union-attr]

    def spread(*norms: str) -> float:
        return round(_rss(*(stats[n, s] for n in norms for s in (small, large))), 1)  # type: ignore[misc]

    versus_control = round(change("frn") - change("group"), 1)
    versus_batch = round(change("frn") - change("batch"), 1)
    control_noise, batch_noise = spread("frn", "group"), spread("frn", "batch")
    return Finding(
        "small-batch",
        f"From {large} to {small} images per batch, FRN's accuracy changes by "
        f"{change('frn'):+.1f} points, group norm's by {change('group'):+.1f} and batch "
        f"norm's by {change('batch'):+.1f}: FRN's change minus group norm's is "
        f"{versus_control:+.1f} (spread {control_noise:.1f}), minus batch norm's "
        f"{versus_batch:+.1f} (spread {batch_noise:.1f}).",
        claim=(
            "Singh & Krishnan (2020) normalise each image and channel on its own (FRN), so "
            "the layer does not depend on the batch: about 0.7-1.0 points of ImageNet top-1 "
            "above batch norm with large batches, more than 1 point above group norm with "
            "small ones."
        ),
        verdict=independence_verdict(versus_control, control_noise, versus_batch, batch_noise),
        numbers={"frn_change": change("frn"), "group_change": change("group"),
                 "batch_change": change("batch"), "versus_control": versus_control,
                 "versus_batch": versus_batch, "control_noise": control_noise,
                 "batch_noise": batch_noise},
    )  # fmt: skip


# =================================================================================== guide
def small_batch_guide(summary: SmallBatchSummary) -> list[GuideRow]:
    """The guide's "micro-batches" row (i.i.d. batches at the smallest size) and its
    "non-i.i.d. batches" row (two-class batches at the first size): the norms not separated
    from the best eval-mode accuracy there; the verdict agrees when batch norm is separated
    below the best (the literature's point), disagrees when batch norm is the best and
    separated from another, is inconclusive otherwise."""
    rows = []
    ends = _ends(summary)
    if ends is not None:
        rows.append(_guide_row(summary, MICRO_BATCHES, IID, ends[0],
                               f"i.i.d. batches of {ends[0]} images",
                               _micro_literature()))  # fmt: skip
    two_class = _two_class_sizes(summary)
    if two_class:
        rows.append(_guide_row(summary, NON_IID, TWO_CLASS, two_class[0],
                               f"two-class batches of {two_class[0]} images",
                               "Ioffe (2017, section 4.3): batches of 32 made of 16 classes x 2 "
                               "images (Inception-v3, ImageNet); batch norm falls far below "
                               f"the i.i.d. {IOFFE_MICRO[4]} % top-1, batch renorm reaches "
                               "about it."))  # fmt: skip
    return [row for row in rows if row is not None]


def _micro_literature() -> str:
    return (
        f"Ioffe (2017), as reported: microbatches of {IOFFE_MICRO[0]}, batch norm "
        f"{IOFFE_MICRO[1]} %, batch renorm {IOFFE_MICRO[2]} % top-1 ({IOFFE_MICRO[4]} % at "
        f"{IOFFE_MICRO[3]}); Qiao et al. (2019): group norm + WS at 1 image per GPU, "
        f"{QIAO_GN_WS} % top-1 error (ResNet-50, the authors' released model); "
        "Wu & He (2018): at 2 images per GPU, 34.7 % error with batch norm, 24.1 % with group "
        "norm."
    )


def _guide_row(
    summary: SmallBatchSummary, situation: str, sampling: str, size: int, where: str,
    literature: str,
) -> GuideRow | None:  # fmt: skip
    accuracy = {norm: s for norm in summary.points.get(sampling, {})
                if (s := _at(summary, sampling, norm, size)) is not None}  # fmt: skip
    if not accuracy:
        return None
    order = sorted(accuracy, key=lambda n: -accuracy[n].mean)  # type: ignore[operator]
    best = leaders(accuracy)
    if "batch" not in accuracy or len(best) == len(accuracy):
        verdict = INCONCLUSIVE
    elif "batch" not in best:
        verdict = AGREES
    elif best[0] == "batch":
        verdict = DISAGREES
    else:
        verdict = INCONCLUSIVE
    evidence = (
        f"LeNet, {where}, eval-mode accuracy: "
        + ", ".join(f"{norm_label(n)} {fmt_pm(accuracy[n])}" for n in order)
        + "."
    )
    recommendation = recommendation_text(best, norm_label, total=len(accuracy))
    return GuideRow(situation, recommendation, evidence, literature, verdict)


# ================================================================================= figures
def small_batch_figure(summary: SmallBatchSummary) -> Figure:
    """Eval-mode accuracy against the batch size (i.i.d., left); two-class against i.i.d.
    batches of the same size (right: one group of bars per norm, mean and ±1 std)."""
    import numpy as np

    from normlab.report.plots import PALETTE, new_figure, plot_lines, style

    with style():
        fig, axes = new_figure(ncols=2, width=12.5, height=4.5)
        iid = summary.points.get(IID, {})
        sizes = [p.batch_size for p in next(iter(iid.values()), [])]
        if sizes:
            series = {norm_label(n): percent(finite_rows([p.eval_accuracy.values for p in pts]).T)
                      for n, pts in iid.items()}  # fmt: skip
            plot_lines(axes[0], sizes, series)
            axes[0].set_xscale("log", base=2)
            axes[0].set_xticks(sizes, [str(s) for s in sizes])
            axes[0].legend(fontsize=8)
        axes[0].set_xlabel(f"images per batch ({summary.examples_seen} examples seen)")
        axes[0].set_ylabel("test accuracy (%)")
        axes[0].set_title("i.i.d. batches, eval mode")
        two_class = summary.points.get(TWO_CLASS, {})
        size = next((pts[0].batch_size for pts in two_class.values() if pts), None)
        if size is not None:
            norms = list(two_class)
            for offset, (sampling, color) in enumerate(
                ((IID, PALETTE[0]), (TWO_CLASS, PALETTE[1]))
            ):
                stats = [_at(summary, sampling, n, size) for n in norms]
                means = [np.nan if s is None else pct(s.mean) for s in stats]  # type: ignore[arg-type]
                errors = [0.0 if s is None else pct(_std(s)) for s in stats]
                xs = np.arange(len(norms)) + (offset - 0.5) * 0.4
                kind = "i.i.d." if sampling == IID else "two-class"
                axes[1].bar(xs, means, width=0.4, yerr=errors, color=color, capsize=3,
                            label=f"{kind} batches")  # fmt: skip
            axes[1].set_xticks(np.arange(len(norms)), [norm_label(n) for n in norms], rotation=30,
                               ha="right", fontsize=8)  # fmt: skip
            axes[1].set_title(f"Batches of {size}, eval mode")
            axes[1].legend(fontsize=8)
        axes[1].set_ylabel("test accuracy (%)")
    return fig
