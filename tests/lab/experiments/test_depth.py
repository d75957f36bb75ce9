"""The depth experiment: cells, signal propagation against autograd, the summary and its
round trip, and the verdicts on constructed numbers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from normlab.data import synthetic_dataset
from normlab.errors import UsageError
from normlab.lab.cells import to_jsonable
from normlab.lab.common import curve_mean_std, seed_stats
from normlab.lab.experiments.depth import (
    DEPTH,
    ArmRuns,
    DepthConfig,
    DepthPoint,
    DepthSummary,
    SignalCurves,
    SignalPoint,
    build_arm,
    depth_findings,
    growth_per_block,
    signal_propagation,
)
from normlab.lab.serialize import from_jsonable
from normlab.lab.study import run_experiment
from normlab.lab.verdicts import AGREES, DISAGREES, INCONCLUSIVE

DATA = synthetic_dataset(96, 48, seed=0)
TINY = DepthConfig(
    dataset="synthetic", train_subset=96, test_subset=48, depths=(4, 8), seeds=2, epochs=1,
    batch_size=32, signal_batch=32, arms=("plain-batch", "residual-none", "residual-zero-init"),
)  # fmt: skip


def test_cells() -> None:
    cells = DEPTH.cells(TINY)
    assert len(cells) == 3 * 2 * 2
    assert cells[0].key == "depth/arm=plain-batch,depth=4/seed=0"
    assert cells[-1].key == "depth/arm=residual-zero-init,depth=8/seed=1"
    deep = next(c for c in cells if c.params["depth"] == 8)
    assert deep.cost > cells[0].cost  # a deeper network costs more


def test_signal_propagation_matches_autograd() -> None:
    model = build_arm("residual-none", 8, seed=0)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    points = signal_propagation(model, x, y)
    assert [p.name for p in points] == [
        "stem", "stage1.0", "stage1.1", "down", "stage2.0", "stage2.1",
    ]  # fmt: skip
    assert [p.layers for p in points] == [1, 3, 5, 6, 8, 10]
    # the oracle: the last block's output and its gradient, computed step by step
    h = model.stage2(model.down(model.stage1(model.stem(x))))
    (grad,) = torch.autograd.grad(
        F.cross_entropy(model.classifier(model.head(h).mean(dim=(2, 3))), y), h
    )
    expected_act = h.detach().double().square().mean().sqrt().item()
    expected_grad = grad.double().square().mean().sqrt().item()
    assert points[-1].activation_rms == pytest.approx(expected_act, rel=1e-6)
    assert points[-1].gradient_rms == pytest.approx(expected_grad, rel=1e-6)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_growth_per_block_closed_forms() -> None:
    def points(rms: list[float]) -> list[SignalPoint]:
        names = ["stem", "down"] + [f"stage2.{i}" for i in range(len(rms) - 2)]
        return [SignalPoint(n, i, r, 1.0) for i, (n, r) in enumerate(zip(names, rms, strict=True))]

    # second moment doubling per block: rms x sqrt(2) per block
    assert growth_per_block(points([1.0, 3.0, 3 * 2**0.5, 6.0, 6 * 2**0.5])) == pytest.approx(2)
    assert growth_per_block(points([1.0, 2.0, 2.0, 2.0])) == pytest.approx(1)
    assert growth_per_block(points([1.0, 2.0])) is None  # no block after the downsampling
    assert growth_per_block(points([1.0, 2.0, math.inf])) is None


def test_tiny_run_summary_and_round_trip() -> None:
    summary = run_experiment(DEPTH, TINY, DATA, progress=False).summary
    assert list(summary.arms) == list(TINY.arms) and summary.depths == [4, 8]
    assert summary.chance == pytest.approx(0.1)
    for runs in summary.arms.values():
        assert [p.depth for p in runs.points] == [4, 8]
        for point in runs.points:
            assert point.seeds == 2 and len(point.loss_curves) == 2
            assert len(point.signal.layers) == 2 + 2 * (point.depth // 4)
            assert len(point.signal.activation_rms.values) == 2
    seeds = summary.arms["plain-batch"].points[0].signal.activation_rms.values
    assert seeds[0] != seeds[1]  # each seed its own initialisation
    zero = summary.arms["residual-zero-init"].points[1].signal
    assert zero.growth_per_block.values == pytest.approx([1.0, 1.0], rel=1e-12)  # identity
    assert from_jsonable(DepthSummary, to_jsonable(summary)) == summary
    assert DEPTH.table(summary).rows[0]["arm"] == "plain-batch"
    assert [f.stem for f in DEPTH.figures(summary)] == ["depth", "depth-signal"]


def test_a_killed_run_resumes_to_the_same_summary(kill_and_resume) -> None:
    config = dataclasses.replace(TINY, depths=(4,), arms=("plain-none", "residual-batch"))
    run = kill_and_resume("depth", config, DATA, after=2)
    assert run.read_back == run.before_kill
    assert len(run.resumed_cells) == 4
    fresh = run_experiment(DEPTH, config, DATA, progress=False)  # every cell seeds itself
    assert run.resumed.summary == fresh.summary


def test_config_errors() -> None:
    with pytest.raises(UsageError, match="every depth must be a positive multiple of 4, got 6"):
        DepthConfig(depths=(4, 6)).validate()
    with pytest.raises(UsageError, match="unknown arm 'resnet'"):
        DepthConfig(arms=("resnet",)).validate()
    with pytest.raises(UsageError, match="depths has repeats"):
        DepthConfig(depths=(4, 4)).validate()


# ------------------------------------------------------------------ verdicts on numbers
def _point(depth: int, accuracies: list[float | None], growth: float = 1.0) -> DepthPoint:
    learned = sum(a is not None and a > 0.15 for a in accuracies)
    blocks = depth // 4
    names = ["stem"] + [f"stage1.{i}" for i in range(blocks)] + ["down"]
    names += [f"stage2.{i}" for i in range(blocks)]
    curve = curve_mean_std([[1.0] * len(names)] * len(accuracies))
    return DepthPoint(
        depth=depth, seeds=len(accuracies), diverged=sum(a is None for a in accuracies),
        learned=learned, test_accuracy=seed_stats(accuracies), train_loss=seed_stats([0.5]),
        first_loss=seed_stats([2.3]),
        signal=SignalCurves(names, list(range(len(names))), curve, curve,
                            seed_stats([growth] * len(accuracies))),
        loss_curves=[],
    )  # fmt: skip


def _summary(arms: dict[str, tuple[list, list]], growth: dict[str, float] | None = None):
    growth = growth or {}
    return DepthSummary(
        arms={
            arm: ArmRuns(
                arm,
                [
                    _point(depth, runs, growth.get(arm, 1.0))
                    for depth, runs in ((4, shallow), (32, deep))
                ],
            )
            for arm, (shallow, deep) in arms.items()
        },
        depths=[4, 32],
        chance=0.1,
    )


GOOD = [0.80, 0.81, 0.79]
CHANCE = [0.10, 0.10, 0.11]


def _verdict(summary: DepthSummary, starts: str) -> str:
    (finding,) = [f for f in depth_findings(summary) if f.text.startswith(starts)]
    for value in finding.numbers.values():  # every cited number is in the sentence
        assert f"{value:g}" in finding.text or f"{value:.1f}" in finding.text
    return finding.verdict


@pytest.mark.parametrize(
    "none_deep,batch_deep,verdict",
    [
        (CHANCE, GOOD, AGREES),  # without norm it stopped training, with batch norm not
        ([0.70, 0.71, 0.69], GOOD, INCONCLUSIVE),  # trained, only worse
        (GOOD, GOOD, DISAGREES),  # trained as well
        (CHANCE, CHANCE, DISAGREES),  # batch norm did not train it either
    ],
)
def test_plain_verdict(none_deep: list, batch_deep: list, verdict: str) -> None:
    summary = _summary({"plain-none": (GOOD, none_deep), "plain-batch": (GOOD, batch_deep)})
    assert _verdict(summary, "Plain network") == verdict


@pytest.mark.parametrize(
    "residual,plain,verdict",
    [(GOOD, [0.70, 0.71, 0.69], AGREES), ([0.70, 0.71, 0.69], GOOD, DISAGREES),
     ([0.80, 0.81, 0.79], [0.81, 0.80, 0.80], INCONCLUSIVE)],
)  # fmt: skip
def test_residual_verdict(residual: list, plain: list, verdict: str) -> None:
    summary = _summary({"plain-batch": (GOOD, plain), "residual-batch": (GOOD, residual)})
    assert _verdict(summary, "With batch norm") == verdict


@pytest.mark.parametrize(
    "standard,zero,verdict",
    [([None, None, None], GOOD, AGREES), (GOOD, GOOD, DISAGREES),
     (CHANCE, CHANCE, INCONCLUSIVE), (GOOD, CHANCE, DISAGREES)],
)  # fmt: skip
def test_zero_init_verdict(standard: list, zero: list, verdict: str) -> None:
    summary = _summary({"residual-none": (GOOD, standard), "residual-zero-init": (GOOD, zero)})
    assert _verdict(summary, "Residual without") == verdict


@pytest.mark.parametrize(
    "none,batch,verdict",
    [(2.0, 1.3, AGREES), (1.1, 1.3, DISAGREES), (2.0, 2.0, DISAGREES), (3.0, 1.3, INCONCLUSIVE)],
)
def test_signal_verdict(none: float, batch: float, verdict: str) -> None:
    summary = _summary(
        {"residual-none": (GOOD, GOOD), "residual-batch": (GOOD, GOOD)},
        growth={"residual-none": none, "residual-batch": batch},
    )
    assert _verdict(summary, "At initialisation") == verdict


@pytest.mark.parametrize(
    "none_deep,recommendation,verdict",
    [
        (CHANCE, "batch norm", AGREES),
        (GOOD, "inconclusive: the seeds separate none of", DISAGREES),
    ],
)
def test_guide_row(none_deep: list, recommendation: str, verdict: str) -> None:
    summary = _summary({"plain-none": (GOOD, none_deep), "plain-batch": (GOOD, GOOD),
                        "residual-batch": (GOOD, GOOD)})  # fmt: skip
    (row,) = DEPTH.guide(summary)
    assert row.situation == "deep networks without skips"
    assert row.recommendation.startswith(recommendation)
    assert row.verdict == verdict
    assert "Depth 32, no skips" in row.evidence and "with skips and batch norm" in row.evidence
    assert DEPTH.guide(_summary({"plain-batch": (GOOD, GOOD)})) == []
