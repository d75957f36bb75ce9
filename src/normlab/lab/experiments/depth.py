"""Depth: when does a deep network stop training, and what normalization and skips change.

The same narrow CNN (:class:`normlab.models.deep_cnn.DeepCNN`: two stages of
pre-activation blocks, 16 and 32 channels) at several depths, in five arms:

- ``plain-none`` and ``plain-batch``: no skip connections, without and with batch norm;
- ``residual-none`` and ``residual-batch``: identity skips around every block;
- ``residual-zero-init``: skips, no norm, each block's last convolution started at zero
  (Fixup, Zhang et al. 2019; SkipInit, De & Smith 2020), so every block is the identity
  at initialisation.

Each cell trains one network and, before training, measures **signal propagation** on a
fixed batch of training images (train mode): at every point of the trunk (stem, each
block, the downsampling) the root mean square of the activations, ``sqrt(mean(x^2))``,
and of the loss gradient with respect to them, ``sqrt(mean((dL/dx)^2))``.

The closed forms the measurements are set against (He initialisation, De & Smith 2020,
section 3): without normalization a residual block adds a branch whose second moment
equals its input's, so the second moment of the residual stream doubles with every
block, ``E[x_k^2] = 2^k E[x_0^2]``; with batch norm each branch adds about one,
``E[x_k^2] = E[x_0^2] + k``: linear growth; with zero-initialised branches it stays at
``E[x_0^2]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.errors import UsageError
from normlab.lab.cells import Cell, estimate_seconds, eval_seconds, seed_list
from normlab.lab.common import (
    CHANCE_MARGIN,
    check_choices,
    check_common,
    check_positive_int,
    curve_mean_std,
    history_record,
    pm,
    seed_stats,
    train_config,
)
from normlab.lab.experiment import Curve, Experiment, FigureSpec, Option, SeedStats, TableSpec
from normlab.lab.figures import percent
from normlab.lab.guide import DEEP_NO_SKIPS, GuideRow, leaders, recommendation_text
from normlab.lab.verdicts import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    Finding,
    fmt3,
    fmt_pct,
    fmt_pm,
    pct,
)

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from normlab.data import Dataset
    from normlab.models.deep_cnn import DeepCNN

__all__ = [
    "ARMS",
    "DEPTH",
    "Arm",
    "ArmRuns",
    "Depth",
    "DepthConfig",
    "DepthPoint",
    "DepthSummary",
    "SignalCurves",
    "SignalPoint",
    "build_arm",
    "depth_findings",
    "depth_guide",
    "growth_per_block",
    "signal_propagation",
]


@dataclass(frozen=True)
class Arm:
    """One kind of network: with or without skips, its norm, zero-initialised branches."""

    residual: bool
    norm: str  # a registry name: "batch" or "none"
    zero_init_last: bool
    label: str  # in sentences and legends


ARMS: dict[str, Arm] = {
    "plain-none": Arm(False, "none", False, "plain, no norm"),
    "plain-batch": Arm(False, "batch", False, "plain, batch norm"),
    "residual-none": Arm(True, "none", False, "residual, no norm"),
    "residual-batch": Arm(True, "batch", False, "residual, batch norm"),
    "residual-zero-init": Arm(True, "none", True, "residual, no norm, zero-init branches"),
}

# He et al. (2016), Table 2: ImageNet top-1 error (%), 10-crop, of the 18- and 34-layer nets.
HE_TOP1_ERROR = {"plain": {18: 27.94, 34: 28.54}, "residual": {18: 27.88, 34: 25.03}}


def build_arm(arm: str, depth: int, seed: int, num_classes: int = 10) -> DeepCNN:
    """The network of ``arm`` at ``depth``, initialised from ``seed`` (the global RNG is
    left untouched)."""
    import torch

    from normlab.models.deep_cnn import DeepCNN

    spec = ARMS[arm]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DeepCNN(
            depth=depth,
            residual=spec.residual,
            norm=spec.norm,
            zero_init_last=spec.zero_init_last,
            num_classes=num_classes,
        )


# ===================================================================== signal propagation
@dataclass(frozen=True)
class SignalPoint:
    """The signal at one point of the trunk at initialisation."""

    name: str  # "stem", "stage1.0", "down", "stage2.3"
    layers: int  # weighted layers from the input up to this point
    activation_rms: float  # sqrt(mean(x^2)) over the batch, channels and positions
    gradient_rms: float  # sqrt(mean((dL/dx)^2)), L the batch's mean cross-entropy


def signal_propagation(
    model: DeepCNN, inputs: torch.Tensor, targets: torch.Tensor
) -> list[SignalPoint]:
    """Activation and gradient scale at every point of ``model``'s trunk.

    One forward and backward pass of the batch's mean cross-entropy on a copy of
    ``model`` in train mode (batch norm with the batch's statistics, as training sees
    it); ``model`` is untouched.

    Shape:
        ``inputs``: ``(B, 1, 28, 28)``, ``targets``: ``(B,)``.
    """
    import torch.nn.functional as F

    twin = copy.deepcopy(model).train()
    captured: list[tuple[str, int, torch.Tensor]] = []
    hooks = []
    for name, module, layers in twin.trunk():

        def keep(mod: torch.nn.Module, args: tuple[object, ...], out: torch.Tensor,
                 name: str = name, layers: int = layers) -> None:  # fmt: skip
            out.retain_grad()
            captured.append((name, layers, out))

        hooks.append(module.register_forward_hook(keep))
    try:
        F.cross_entropy(twin(inputs), targets).backward()
    finally:
        for handle in hooks:
            handle.remove()
    return [
        SignalPoint(
            name=name,
            layers=layers,
            activation_rms=_rms(out.detach()),
            gradient_rms=_rms(out.grad) if out.grad is not None else math.nan,
        )
        for name, layers, out in captured
    ]


def _rms(tensor: torch.Tensor) -> float:
    return float(tensor.double().square().mean().sqrt())


def growth_per_block(points: Sequence[SignalPoint]) -> float | None:
    """The factor by which the second moment of the activations grows per block of the
    second stage: ``(E[x_n^2] / E[x_0^2])^(1/n)``, ``x_0`` the downsampling's output and
    ``x_n`` the last block's (n blocks). None without blocks or with a non-finite value.

    Closed forms: 2 without normalization (residual, He initialisation), 1 with
    zero-initialised branches, ``(1 + n)^(1/n)`` with batch norm.
    """
    names = [p.name for p in points]
    if "down" not in names:
        return None
    start = names.index("down")
    blocks = points[start + 1 :]
    if not blocks:
        return None
    first, last = points[start].activation_rms, blocks[-1].activation_rms
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0 or last <= 0:
        return None
    return (last / first) ** (2.0 / len(blocks))


# ============================================================================ experiment
@dataclass(frozen=True)
class DepthConfig:
    """Settings of the depth experiment (defaults: the study's budget on a 2-core CPU)."""

    arms: tuple[str, ...] = tuple(ARMS)
    depths: tuple[int, ...] = (4, 8, 16, 32)  # 3x3 convolutions in the stages
    seeds: int = 3
    epochs: int = 2
    signal_batch: int = 256  # training images of the signal-propagation measurement
    dataset: str = "fashion-mnist"
    train_subset: int | None = 6_000
    test_subset: int | None = 2_000
    lr: float = 0.02
    momentum: float = 0.9
    batch_size: int = 64
    device: str = "cpu"

    def validate(self) -> None:
        check_choices("arms", self.arms, list(ARMS))
        if isinstance(self.depths, str) or not self.depths:
            raise UsageError(f"depths must be a non-empty list, got {self.depths!r}")
        for depth in self.depths:
            if isinstance(depth, bool) or not isinstance(depth, int) or depth < 4 or depth % 4:
                raise UsageError(f"every depth must be a positive multiple of 4, got {depth!r}")
        if len(set(self.depths)) != len(self.depths):
            raise UsageError(f"depths has repeats: {self.depths}")
        check_positive_int("signal_batch", self.signal_batch, 2)
        check_positive_int("batch_size", self.batch_size, 2)
        check_common(self)


@dataclass(frozen=True)
class SignalCurves:
    """Signal propagation at initialisation along the trunk, mean ± std across seeds.

    Shape:
        ``layers``: ``(P,)``; the curves: ``(P,)`` (``values``: ``(seeds, P)``).
    """

    names: list[str]
    layers: list[int]
    activation_rms: Curve
    gradient_rms: Curve
    growth_per_block: SeedStats  # see growth_per_block()


@dataclass(frozen=True)
class DepthPoint:
    """Every seed of one arm at one depth."""

    depth: int
    seeds: int
    diverged: int  # seeds whose loss became non-finite
    learned: int  # seeds that finished more than 5 points above chance
    test_accuracy: SeedStats  # finished seeds only
    train_loss: SeedStats  # the last epoch's mean training loss
    first_loss: SeedStats  # the loss of the first step (initialisation)
    signal: SignalCurves
    loss_curves: list[list[list[float]]]  # per seed: [[mid_step, mean_loss], ...]


@dataclass(frozen=True)
class ArmRuns:
    """One arm at every depth, in the config's order."""

    arm: str
    points: list[DepthPoint]


@dataclass(frozen=True)
class DepthSummary:
    """Per arm, its runs at each depth; chance accuracy."""

    arms: dict[str, ArmRuns]
    depths: list[int]
    chance: float


class Depth(Experiment[DepthConfig, DepthSummary]):
    """Plain and residual CNNs of growing depth, with and without normalization."""

    name = "depth"
    title = "Deep networks"
    introduction = (
        "A narrow CNN (pre-activation blocks of two 3x3 convolutions, 16 then 32 channels, "
        "He initialisation) at growing depth, plain and residual, with batch norm and "
        "without, and residual without norm but each block's last convolution started at "
        "zero (Fixup/SkipInit). Before training, the signal at every point of the trunk: the "
        "root mean square of the activations and of the loss gradient. A seed learned "
        "when it finished more than 5 points above chance."
    )
    config_type = DepthConfig
    summary_type = DepthSummary
    command = ("sweep", "depth")
    options = (
        Option("--depths", "depths", "int-list",
               "depth: 3x3 convolutions, multiples of 4 (default 4,8,16,32)", "A,B,..."),
        Option("--arms", "arms", "list", "depth: which networks (default: all five, "
               + ",".join(ARMS) + ")", "A,B,..."),
        Option("--lr", "lr", "float", "SGD learning rate (default 0.02)", "LR"),
    )  # fmt: skip

    def study_config(self, *, quick: bool, dataset: str, device: str, syncbn: bool) -> DepthConfig:
        if quick:
            return DepthConfig(
                dataset=dataset, device=device, depths=(4, 16), train_subset=1_000,
                test_subset=500, seeds=2, epochs=1, signal_batch=64,
            )  # fmt: skip
        return DepthConfig(dataset=dataset, device=device)

    def models(self, config: DepthConfig) -> tuple[str, ...]:
        """The narrow CNN, plain and residual, at the config's depths."""
        low, high = min(config.depths), max(config.depths)
        depths = f"depth {low}" if low == high else f"depths {low} to {high}"
        return (f"plain and residual CNNs ({depths})",)

    def cells(self, config: DepthConfig) -> list[Cell]:
        """One cell per arm x depth x seed."""
        return [
            Cell(self.name, (("arm", arm), ("depth", depth)), seed, _cost(config, arm, depth))
            for arm in config.arms
            for depth in config.depths
            for seed in seed_list(config.seeds)
        ]

    def run_cell(self, config: DepthConfig, data: Dataset, cell: Cell) -> dict[str, Any]:
        """Measure the signal at initialisation, then train one network."""
        from normlab.data import normalize_images
        from normlab.train.engine import fit

        arm, depth = str(cell.params["arm"]), int(cell.params["depth"])
        train = train_config(config, norm=ARMS[arm].norm, seed=cell.seed)
        model = build_arm(arm, depth, cell.seed, num_classes=len(data.classes))
        count = min(config.signal_batch, len(data.train_labels))
        x = normalize_images(data.train_images[:count]).to(train.device)
        y = data.train_labels[:count].to(train.device)
        signal = signal_propagation(model.to(train.device), x, y)
        history = fit(model, data, train, progress=False)
        record = history_record(history)
        record["first_loss"] = history.step_losses[0] if history.step_losses else None
        record["signal"] = [vars(p) for p in signal]
        record["chance"] = 1.0 / len(data.classes)
        return record

    def summarize(
        self, config: DepthConfig, cells: list[Cell], results: Mapping[str, Mapping[str, Any]]
    ) -> DepthSummary:
        """Per arm and depth: accuracy, losses and the signal, mean ± std across seeds."""
        arms = {}
        for arm in config.arms:
            points = []
            for depth in config.depths:
                runs = [results[c.key] for c in cells if c.params == {"arm": arm, "depth": depth}]
                points.append(_depth_point(depth, runs))
            arms[arm] = ArmRuns(arm=arm, points=points)
        chance = next(iter(results.values()))["chance"] if results else 0.1
        return DepthSummary(arms=arms, depths=list(config.depths), chance=float(chance))

    def findings(self, summary: DepthSummary) -> list[Finding]:
        return depth_findings(summary)

    def guide(self, summary: DepthSummary) -> list[GuideRow]:
        return depth_guide(summary)

    def table(self, summary: DepthSummary) -> TableSpec:
        from normlab.report import Column

        rows = [
            {
                "arm": arm,
                "depth": p.depth,
                "accuracy": pm(p.test_accuracy),
                "train_loss": pm(p.train_loss, 1.0, ""),
                "learned": f"{p.learned}/{p.seeds}",
                "diverged": f"{p.diverged}/{p.seeds}",
                "growth": p.signal.growth_per_block.mean,
                "gradient": _gradient_ratio(p.signal),
            }
            for arm, runs in summary.arms.items()
            for p in runs.points
        ]
        columns = [
            Column("arm"),
            Column("depth", "depth"),
            Column("accuracy", "test accuracy", align="right"),
            Column("train_loss", "train loss", align="right"),
            Column("learned", "learned", align="right"),
            Column("diverged", "diverged", align="right"),
            Column("growth", "E[x²] growth / block (init)", fmt=".3g"),
            Column("gradient", "grad rms first / last (init)", fmt=".3g"),
        ]
        return TableSpec(rows, columns)

    def figures(self, summary: DepthSummary) -> list[FigureSpec]:
        deepest = max(summary.depths)
        return [
            FigureSpec(
                "depth",
                depth_figure(summary),
                "Test accuracy and final training loss against depth, per network (mean ± "
                "std across seeds; a seed that diverged has no point).",
            ),
            FigureSpec(
                "depth-signal",
                signal_figure(summary, deepest),
                f"Signal propagation at initialisation, depth {deepest}: the root mean square "
                "of the activations and of the loss gradient at every point of the trunk "
                "(mean ± std across seeds, log scale).",
            ),
        ]


DEPTH = Depth()


def _cost(config: DepthConfig, arm: str, depth: int) -> float:
    """Estimated seconds: a LeNet step's cost scaled by the convolutions, linearly in the
    depth (the slope fitted to the measured step times of the deeper networks)."""
    examples = config.epochs * (config.train_subset or 60_000)
    tests = config.test_subset or 10_000
    scale = 0.5 + 0.45 * depth
    norm = ARMS[arm].norm
    return scale * (estimate_seconds(examples, config.batch_size, norm) + eval_seconds(tests))


def _depth_point(depth: int, runs: Sequence[Mapping[str, Any]]) -> DepthPoint:
    def final(run: Mapping[str, Any], key: str) -> float | None:
        return None if run["final"] is None else float(run["final"][key])

    return DepthPoint(
        depth=depth,
        seeds=len(runs),
        diverged=sum(bool(r["diverged"]) for r in runs),
        learned=sum(_learned(r) for r in runs),
        test_accuracy=seed_stats([final(r, "test_accuracy") for r in runs]),
        train_loss=seed_stats([final(r, "train_loss") for r in runs]),
        first_loss=seed_stats([r["first_loss"] for r in runs]),
        signal=_signal_curves([[SignalPoint(**p) for p in r["signal"]] for r in runs]),
        loss_curves=[r["loss_curve"] for r in runs],
    )


def _learned(run: Mapping[str, Any]) -> bool:
    """Finished without diverging and ended clearly above chance."""
    final = run["final"]
    return final is not None and final["test_accuracy"] > run["chance"] + CHANCE_MARGIN


def _signal_curves(per_seed: Sequence[Sequence[SignalPoint]]) -> SignalCurves:
    first = per_seed[0] if per_seed else []
    return SignalCurves(
        names=[p.name for p in first],
        layers=[p.layers for p in first],
        activation_rms=curve_mean_std([[p.activation_rms for p in s] for s in per_seed]),
        gradient_rms=curve_mean_std([[p.gradient_rms for p in s] for s in per_seed]),
        growth_per_block=seed_stats([growth_per_block(s) for s in per_seed]),
    )


def _gradient_ratio(signal: SignalCurves) -> float | None:
    """The gradient's scale at the stem over its scale at the last block (mean over seeds)."""
    grads = signal.gradient_rms.mean
    if len(grads) < 2 or not grads[-1] > 0 or not math.isfinite(grads[0]):
        return None
    return grads[0] / grads[-1]


# ================================================================================ findings
def _point(summary: DepthSummary, arm: str, depth: int) -> DepthPoint | None:
    runs = summary.arms.get(arm)
    if runs is None:
        return None
    return next((p for p in runs.points if p.depth == depth), None)


def _trains(point: DepthPoint) -> bool:
    return point.learned == point.seeds


def _spread(*stats: SeedStats) -> float:
    """The largest std among ``stats`` (0 for a single seed)."""
    return max((s.std or 0.0) for s in stats)


def _accuracy_text(point: DepthPoint) -> str:
    """``"88.1 ± 0.3 %"``, or what happened when not every seed finished."""
    if point.test_accuracy.mean is None:
        return f"diverged in all {point.seeds} seeds"
    text = fmt_pm(point.test_accuracy)
    if point.diverged:
        text += f" ({point.diverged} of {point.seeds} seeds diverged)"
    return text


def _mean(point: DepthPoint) -> float:
    """The mean accuracy, chance-level 0 for a point where every seed diverged."""
    return point.test_accuracy.mean if point.test_accuracy.mean is not None else 0.0


def depth_findings(summary: DepthSummary) -> list[Finding]:
    """Plain nets with and without batch norm as depth grows (Ioffe & Szegedy; He et al.),
    residual against plain (He et al.), residual without norm against zero-initialised
    branches (Zhang et al.; De & Smith) and the signal's growth at initialisation."""
    if not summary.depths:
        return []
    deep, shallow = max(summary.depths), min(summary.depths)
    findings = [
        f
        for f in (
            _plain_finding(summary, shallow, deep),
            _residual_finding(summary, shallow, deep),
            _zero_init_finding(summary, deep),
            _signal_finding(summary, deep),
        )
        if f is not None
    ]
    return findings


def _plain_finding(summary: DepthSummary, shallow: int, deep: int) -> Finding | None:
    none_deep, bn_deep = _point(summary, "plain-none", deep), _point(summary, "plain-batch", deep)
    none_shallow = _point(summary, "plain-none", shallow)
    if none_deep is None or bn_deep is None or none_shallow is None or deep == shallow:
        return None
    gap = _mean(bn_deep) - _mean(none_deep)
    spread = _spread(none_deep.test_accuracy, bn_deep.test_accuracy)
    if not _trains(bn_deep):
        verdict, how = DISAGREES, "batch norm did not train it either"
    elif not _trains(none_deep):
        verdict, how = AGREES, "without normalization it stopped training"
    elif gap > spread:
        verdict = INCONCLUSIVE
        how = "without normalization it still trained, only worse by more than the seed spread"
    else:
        verdict, how = DISAGREES, "without normalization it trained as well"
    text = (
        f"Plain network without normalization: {_accuracy_text(none_shallow)} at depth "
        f"{shallow}, {_accuracy_text(none_deep)} at depth {deep} (learned in "
        f"{none_deep.learned} of {none_deep.seeds} seeds); with batch norm at depth {deep}: "
        f"{_accuracy_text(bn_deep)}. At depth {deep} {how} (chance "
        f"{fmt_pct(summary.chance)})."
    )
    numbers = {"none_deep_learned": float(none_deep.learned), "chance": pct(summary.chance)}
    for key, point in (("none_shallow", none_shallow), ("none_deep", none_deep),
                       ("batch_deep", bn_deep)):  # fmt: skip
        if point.test_accuracy.mean is not None:
            numbers[f"{key}_accuracy"] = pct(point.test_accuracy.mean)
    return Finding(
        "depth",
        text,
        claim=(
            "Ioffe & Szegedy (2015) train deep networks with batch norm that do not train "
            "without it (sigmoid Inception never exceeds 0.1 % accuracy without batch norm); "
            "He et al. (2016) train 34-layer plain networks only with batch norm."
        ),
        verdict=verdict,
        numbers=numbers,
    )


def _residual_finding(summary: DepthSummary, shallow: int, deep: int) -> Finding | None:
    points = {
        (arm, depth): _point(summary, arm, depth)
        for arm in ("plain-batch", "residual-batch")
        for depth in (shallow, deep)
    }
    if any(p is None for p in points.values()) or deep == shallow:
        return None
    plain, res = points[("plain-batch", deep)], points[("residual-batch", deep)]
    assert plain is not None and res is not None
    diff = 100 * (_mean(res) - _mean(plain))
    spread = 100 * _spread(plain.test_accuracy, res.test_accuracy)
    if abs(diff) <= spread:
        verdict, how = INCONCLUSIVE, "within the spread between seeds"
    else:
        verdict = AGREES if diff > 0 else DISAGREES
        better = "residual" if diff > 0 else "plain"
        how = f"the {better} network is better by more than the spread between seeds"
    shallow_plain, shallow_res = (
        points[("plain-batch", shallow)],
        points[("residual-batch", shallow)],
    )
    assert shallow_plain is not None and shallow_res is not None
    he = HE_TOP1_ERROR
    return Finding(
        "depth",
        f"With batch norm at depth {deep}, the residual network reaches "
        f"{_accuracy_text(res)} and the plain one {_accuracy_text(plain)}: {diff:+.1f} points, "
        f"{how} ({spread:.1f} points); at depth {shallow}: {_accuracy_text(shallow_res)} "
        f"against {_accuracy_text(shallow_plain)}.",
        claim=(
            f"He et al. (2016, Table 2) report ImageNet top-1 errors of {he['residual'][34]} % "
            f"(ResNet-34) against {he['plain'][34]} % (plain-34), and {he['residual'][18]} % "
            f"against {he['plain'][18]} % at 18 layers: the skips matter more as depth grows."
        ),
        verdict=verdict,
        numbers={"difference": round(diff, 1), "spread": round(spread, 1)}
        | {
            f"{arm.split('-')[0]}_{depth}_accuracy": pct(p.test_accuracy.mean)
            for (arm, depth), p in points.items()
            if p is not None and p.test_accuracy.mean is not None
        },
    )


def _zero_init_finding(summary: DepthSummary, deep: int) -> Finding | None:
    plain, zero = (
        _point(summary, "residual-none", deep),
        _point(summary, "residual-zero-init", deep),
    )
    if plain is None or zero is None:
        return None
    diff = 100 * (_mean(zero) - _mean(plain))
    spread = 100 * _spread(plain.test_accuracy, zero.test_accuracy)
    if not _trains(zero):
        verdict = INCONCLUSIVE if not _trains(plain) else DISAGREES
        how = "the zero-initialised network did not train in every seed"
    elif not _trains(plain):
        verdict, how = AGREES, "only the zero-initialised one trained in every seed"
    elif diff > spread:
        verdict, how = AGREES, "zero-initialised branches are better by more than the spread"
    else:
        verdict, how = DISAGREES, "the standard initialisation trained as well"
    numbers = {"difference": round(diff, 1), "spread": round(spread, 1)}
    for key, point in (("standard", plain), ("zero_init", zero)):
        if point.test_accuracy.mean is not None:
            numbers[f"{key}_accuracy"] = pct(point.test_accuracy.mean)
    return Finding(
        "depth",
        f"Residual without normalization at depth {deep}: {_accuracy_text(plain)} with the "
        f"standard initialisation, {_accuracy_text(zero)} with each block's last convolution "
        f"at zero: {diff:+.1f} points (seed spread {spread:.1f}); {how}.",
        claim=(
            "Zhang et al. (2019, Fixup) and De & Smith (2020, SkipInit) train deep residual "
            "networks without normalization once each residual branch starts at zero; with "
            "the standard initialisation the signal explodes with depth."
        ),
        verdict=verdict,
        numbers=numbers,
    )


def _signal_finding(summary: DepthSummary, deep: int) -> Finding | None:
    none, bn = _point(summary, "residual-none", deep), _point(summary, "residual-batch", deep)
    if none is None or bn is None:
        return None
    g_none, g_bn = none.signal.growth_per_block, bn.signal.growth_per_block
    if g_none.mean is None or g_bn.mean is None:
        return None
    blocks = sum(name.startswith("stage2.") for name in none.signal.names)
    linear = (1.0 + blocks) ** (1.0 / blocks)
    # On a log scale: the none arm nearer 2 than 1 (exponential), batch norm nearer the
    # linear law's factor than 2.
    exponential = abs(math.log2(g_none.mean) - 1.0) < 0.5
    linear_bn = abs(math.log2(g_bn.mean / linear)) < abs(math.log2(g_bn.mean / 2.0))
    if blocks < 4:
        verdict = INCONCLUSIVE  # 2^n and 1 + n are too close for few blocks
    elif exponential and linear_bn:
        verdict = AGREES
    elif g_none.mean < math.sqrt(2.0) or not linear_bn:
        verdict = DISAGREES
    else:
        verdict = INCONCLUSIVE
    return Finding(
        "depth",
        f"At initialisation (depth {deep}, {blocks} blocks in the second stage) the second "
        f"moment of the residual stream grows by a factor {fmt3(g_none.mean)} per block "
        f"without normalization and {fmt3(g_bn.mean)} with batch norm (the linear law gives "
        f"{fmt3(linear)}); with zero-initialised branches it stays constant.",
        claim=(
            "De & Smith (2020) show that with He initialisation the variance of an "
            "unnormalized residual network doubles with every block (factor 2), while batch "
            "norm makes it grow only linearly with depth."
        ),
        verdict=verdict,
        numbers={
            "growth_none": float(fmt3(g_none.mean)),
            "growth_batch": float(fmt3(g_bn.mean)),
            "growth_linear": float(fmt3(linear)),
            "blocks": float(blocks),
        },
    )


# =================================================================================== guide
def depth_guide(summary: DepthSummary) -> list[GuideRow]:
    """The guide's row for deep networks without skips: at the deepest depth, the plain
    network with batch norm against without, the residual one beside it."""
    if not summary.depths:
        return []
    deep, shallow = max(summary.depths), min(summary.depths)
    plain = {
        arm: point
        for arm in ("plain-none", "plain-batch")
        if (point := _point(summary, arm, deep)) is not None
    }
    finding = _plain_finding(summary, shallow, deep)
    if len(plain) < 2 or finding is None:
        return []
    names = {"plain-none": "no normalization", "plain-batch": "batch norm"}
    best = leaders({arm: point.test_accuracy for arm, point in plain.items()})
    evidence = f"Depth {deep}, no skips: " + "; ".join(
        f"{names[arm]} {_accuracy_text(point)} (learned {point.learned}/{point.seeds})"
        for arm, point in plain.items()
    )
    residual = _point(summary, "residual-batch", deep)
    if residual is not None:
        evidence += f"; with skips and batch norm {_accuracy_text(residual)}"
    he = HE_TOP1_ERROR
    return [
        GuideRow(
            situation=DEEP_NO_SKIPS,
            recommendation=recommendation_text(best, names.__getitem__, total=len(plain)),
            evidence=evidence + ".",
            literature=(
                "Ioffe & Szegedy (2015); He et al. (2016, Table 2): plain nets of 34 layers "
                f"train with batch norm ({he['plain'][34]} % ImageNet top-1 error; "
                f"{he['residual'][34]} % with skips)"
            ),
            verdict=finding.verdict,
        )
    ]


# ================================================================================= figures
def depth_figure(summary: DepthSummary) -> Figure:
    """Final test accuracy (left) and final training loss (right, log) against depth,
    one line per arm, error bars ±1 std."""
    from normlab.report.plots import PALETTE, new_figure, style

    with style():
        fig, (acc_ax, loss_ax) = new_figure(ncols=2, width=12.5, height=4.5)
        for index, (arm, runs) in enumerate(summary.arms.items()):
            color = PALETTE[index % len(PALETTE)]
            for ax, key, scale in ((acc_ax, "test_accuracy", 100.0), (loss_ax, "train_loss", 1.0)):
                stats = [(p.depth, getattr(p, key)) for p in runs.points]
                done = [(d, s) for d, s in stats if s.mean is not None]
                if not done:
                    continue
                ax.errorbar(
                    [d for d, _ in done],
                    [scale * s.mean for _, s in done],
                    yerr=[scale * (s.std or 0.0) for _, s in done],
                    color=color, marker="o", ms=4, capsize=3, label=ARMS[arm].label,
                )  # fmt: skip
        acc_ax.axhline(percent(summary.chance), color="grey", ls=":", lw=1, label="chance")
        for ax in (acc_ax, loss_ax):
            ax.set_xscale("log", base=2)
            ax.set_xticks(summary.depths, [str(d) for d in summary.depths])
            ax.set_xlabel("depth (3x3 convolutions)")
        loss_ax.set_yscale("log")
        acc_ax.set_ylabel("final test accuracy (%)")
        acc_ax.set_title("Does it train?")
        loss_ax.set_ylabel("final training loss (nats)")
        loss_ax.set_title("Training loss after the last epoch")
        acc_ax.legend(fontsize=8)
    return fig


def signal_figure(summary: DepthSummary, depth: int) -> Figure:
    """Activation RMS (left) and gradient RMS (right) along the trunk at initialisation,
    one line per arm (log scale, ±1 std band)."""
    from normlab.report.plots import PALETTE, new_figure, plot_lines, style

    with style():
        fig, (act_ax, grad_ax) = new_figure(ncols=2, width=12.5, height=4.5)
        for index, (arm, runs) in enumerate(summary.arms.items()):
            point = next((p for p in runs.points if p.depth == depth), None)
            if point is None or not point.signal.layers:
                continue
            color = [PALETTE[index % len(PALETTE)]]
            x = np.asarray(point.signal.layers, dtype=np.float64)
            for ax, curve in ((act_ax, point.signal.activation_rms),
                              (grad_ax, point.signal.gradient_rms)):  # fmt: skip
                values = np.asarray(curve.values, dtype=np.float64)
                values = np.where(values > 0, values, np.nan)
                plot_lines(ax, x, {ARMS[arm].label: values}, colors=color, markers=False)
        for ax in (act_ax, grad_ax):
            ax.set_yscale("log")
            ax.set_xlabel("weighted layers from the input")
        act_ax.set_ylabel("activation RMS")
        act_ax.set_title("Forward: activation scale per layer")
        grad_ax.set_ylabel("RMS of dL/dx")
        grad_ax.set_title("Backward: gradient scale per layer")
        act_ax.legend(fontsize=7)
    return fig
