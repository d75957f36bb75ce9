"""The train/eval experiment: the moving averages against batch norm's own, frozen and
fused batch norm against evaluation-mode batch norm, cells, the summary's round trip and
the verdicts on constructed numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normlab.data import synthetic_dataset
from normlab.errors import UsageError
from normlab.lab.cells import to_jsonable
from normlab.lab.common import curve_mean_std, seed_stats
from normlab.lab.experiments.train_eval import (
    TRAIN_EVAL,
    FinetuneStats,
    FusionStats,
    MovingAverages,
    StatisticsRuns,
    TrainEvalConfig,
    TrainEvalSummary,
    compare_fused,
    freeze_every_batch_norm,
    train_eval_findings,
)
from normlab.lab.serialize import from_jsonable
from normlab.lab.study import run_experiment
from normlab.lab.verdicts import AGREES, DISAGREES, INCONCLUSIVE
from normlab.models.lenet import LeNet
from normlab.nn import BatchNorm2d
from normlab.testing.tolerance import assert_close_sum

DATA = synthetic_dataset(192, 64, seed=0)
TINY = TrainEvalConfig(
    dataset="synthetic", train_subset=192, test_subset=64, seeds=2, epochs=2, batch_size=16,
    precise_batches=4, finetune_subset=32, timing_repeats=2, inference_batch_size=32,
)  # fmt: skip


def _trained_statistics(model: nn.Module) -> None:
    """Running statistics far from their initial values, as after training."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.uniform_(-2, 2)
            module.running_var.uniform_(0.5, 3)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)


def test_moving_averages_equal_batch_norms_own() -> None:
    """Followed with the layer's own momentum, the EMA is the layer's running statistics
    (normlab's batch norm, equal to torch.nn's); other momenta follow the same formula."""
    layer = BatchNorm2d(3, momentum=0.1).double()
    model = nn.Sequential(layer)
    averages = MovingAverages(model, [0.1, 0.5])
    inputs = [torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2 + 1 for _ in range(6)]
    expected_mean, expected_var = torch.zeros(3, dtype=torch.float64), torch.ones(3).double()
    for x in inputs:
        model(x)
        expected_mean = 0.5 * expected_mean + 0.5 * x.mean(dim=(0, 2, 3))
        expected_var = 0.5 * expected_var + 0.5 * x.var(dim=(0, 2, 3))
    model.eval()(inputs[0])  # evaluation does not move the averages
    averages.remove()
    model.train()(inputs[0])  # nor does training once removed
    terms = 4 * 5 * 5 * len(inputs)
    abs_sum = max(float(x.square().mean()) for x in inputs)
    twin = averages.model_with(model, 0.1)[0]
    own = BatchNorm2d(3).double()  # the oracle: the same batches through a fresh layer
    for x in inputs:
        own(x)
    assert_close_sum(twin.running_mean, own.running_mean, terms=terms, abs_sum=abs_sum)
    assert_close_sum(twin.running_var, own.running_var, terms=terms, abs_sum=abs_sum)
    half = averages.model_with(model, 0.5)[0]
    assert_close_sum(half.running_mean, expected_mean, terms=terms, abs_sum=abs_sum)
    assert_close_sum(half.running_var, expected_var, terms=terms, abs_sum=abs_sum)


def test_frozen_network_is_the_evaluation_mode_network() -> None:
    model = LeNet(norm="batch").double()
    _trained_statistics(model)
    x = torch.randn(8, 1, 28, 28, dtype=torch.float64)
    expected = model.eval()(x)
    frozen = freeze_every_batch_norm(model).train()  # frozen in training mode too
    assert not any(isinstance(m, _BatchNorm) for m in frozen.modules())
    torch.testing.assert_close(frozen(x), expected, rtol=0, atol=1e-12)
    trainable = {name for name, _ in frozen.named_parameters()}
    layers = {
        f"{name}.{p}"
        for name, m in frozen.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
        for p in ("weight", "bias")
    }
    assert trainable == layers  # the norms train nothing


def test_fused_network_predicts_the_same() -> None:
    model = LeNet(norm="batch")
    _trained_statistics(model)
    images = DATA.test_images
    result = compare_fused(model, images, batch_size=16, repeats=2)
    assert result.batch_norms_left == 0
    assert result.unexplained == 0
    assert 0 <= result.max_logit_difference < 1e-3
    assert result.unfused_seconds > 0 and result.fused_seconds > 0


def test_cells() -> None:
    keys = [c.key for c in TRAIN_EVAL.cells(TINY)]
    assert keys == [
        "train-eval/part=statistics/seed=0", "train-eval/part=statistics/seed=1",
        "train-eval/part=finetune/seed=0", "train-eval/part=finetune/seed=1",
    ]  # fmt: skip


def test_tiny_run_summary_and_round_trip() -> None:
    summary = run_experiment(TRAIN_EVAL, TINY, DATA, progress=False).summary
    stats, fusion, tune = summary.statistics, summary.fusion, summary.finetune
    assert stats is not None and fusion is not None and tune is not None
    assert stats.epochs == [1, 2] and list(stats.ema) == ["0.01", "0.1", "0.5"]
    assert len(stats.precise.values) == 2 and len(stats.precise.values[0]) == 2
    assert fusion.examples == 64 and fusion.batch_norms_left == [0, 0]
    assert list(tune.after) == ["batch", "frozen-batch", "group"]
    # batch norm and frozen batch norm start from the same pre-trained network
    assert tune.before["batch"].values == tune.before["frozen-batch"].values
    assert stats.batch_stats.values[0] != stats.batch_stats.values[1]  # seeds differ
    assert from_jsonable(TrainEvalSummary, to_jsonable(summary)) == summary
    assert len(TRAIN_EVAL.table(summary).rows) == 1 + 3 + 1 + 3 + 1
    assert [f.stem for f in TRAIN_EVAL.figures(summary)] == [
        "train-eval-statistics", "train-eval-finetune-fusion",
    ]  # fmt: skip


def test_a_killed_run_resumes_to_the_same_numbers(kill_and_resume) -> None:
    config = dataclasses.replace(TINY, epochs=1)
    run = kill_and_resume("train-eval", config, DATA, after=1)
    resumed = run.resumed.summary
    assert run.read_back == run.before_kill and len(run.resumed_cells) == 4
    fresh = run_experiment(TRAIN_EVAL, config, DATA, progress=False).summary
    assert resumed.statistics == fresh.statistics and resumed.finetune == fresh.finetune
    assert resumed.fusion is not None and fresh.fusion is not None  # timings differ
    assert resumed.fusion.disagreements == fresh.fusion.disagreements


def test_config_errors() -> None:
    with pytest.raises(UsageError, match=r"every batch-norm momentum must be in \(0, 1\]"):
        TrainEvalConfig(momenta=(0.0,)).validate()
    with pytest.raises(UsageError, match="unknown finetune_arm 'layer'"):
        TrainEvalConfig(finetune_arms=("layer",)).validate()
    with pytest.raises(UsageError, match="finetune_batch_size must be an integer >= 2"):
        TrainEvalConfig(finetune_batch_size=1).validate()
    with pytest.raises(UsageError, match="leaves no image to pre-train on"):
        TrainEvalConfig(train_subset=500, finetune_subset=500).validate()


# ------------------------------------------------------------------ verdicts on numbers
def _stats(values: list[float]):
    return seed_stats(values)


def _statistics(precise: list[float], ema: list[float]) -> StatisticsRuns:
    curve = curve_mean_std([[0.8], [0.8], [0.8]])
    return StatisticsRuns(
        epochs=[1], batch_stats=curve, ema={"0.1": curve}, precise=curve,
        final_batch_stats=_stats([0.8, 0.8, 0.8]), final_ema={"0.1": _stats(ema)},
        final_precise=_stats(precise),
        precise_minus_ema={"0.1": _stats([p - e for p, e in zip(precise, ema, strict=True)])},
    )  # fmt: skip


def _summary(statistics=None, fusion=None, finetune=None) -> TrainEvalSummary:
    return TrainEvalSummary(momenta=[0.1], statistics=statistics, fusion=fusion, finetune=finetune)


def _only(summary: TrainEvalSummary, starts: str) -> str:
    (finding,) = [f for f in train_eval_findings(summary) if f.text.startswith(starts)]
    for value in finding.numbers.values():  # every cited number is printed
        assert f"{value:g}" in finding.text or f"{value:.1f}" in finding.text, value
    return finding.verdict


@pytest.mark.parametrize(
    "precise,ema,verdict",
    [([0.85, 0.86, 0.85], [0.80, 0.81, 0.80], AGREES),
     ([0.80, 0.81, 0.80], [0.85, 0.86, 0.85], DISAGREES),
     ([0.80, 0.82, 0.81], [0.81, 0.80, 0.82], INCONCLUSIVE)],
)  # fmt: skip
def test_precise_statistics_verdict(precise: list, ema: list, verdict: str) -> None:
    assert _only(_summary(statistics=_statistics(precise, ema)), "After 1 epoch") == verdict


def _finetune(batch: list, frozen: list, group: list) -> FinetuneStats:
    arms = {"batch": batch, "frozen-batch": frozen, "group": group}
    return FinetuneStats(
        batch_size=2, before={a: _stats([0.3, 0.3, 0.3]) for a in arms},
        after={a: _stats(v) for a, v in arms.items()}, diverged={a: 0 for a in arms},
    )  # fmt: skip


GOOD, BAD, NOISY = [0.80, 0.81, 0.79], [0.60, 0.62, 0.61], [0.70, 0.90, 0.55]


@pytest.mark.parametrize(
    "batch,other,verdict",
    [(BAD, GOOD, AGREES), (GOOD, BAD, DISAGREES), (GOOD, NOISY, INCONCLUSIVE)],
)
def test_finetune_verdicts(batch: list, other: list, verdict: str) -> None:
    group_first = _summary(finetune=_finetune(batch, GOOD, other))
    assert _only(group_first, "Fine-tuned at 2") == verdict
    frozen_first = _summary(finetune=_finetune(batch, other, GOOD))
    assert _only(frozen_first, "Frozen batch norm") == verdict


def _fusion(unexplained: list[int], speedup: list[float]) -> FusionStats:
    return FusionStats(
        examples=100, disagreements=[u + 1 for u in unexplained], unexplained=unexplained,
        max_logit_difference=_stats([1e-6, 2e-6, 1e-6]), batch_norms_left=[0, 0, 0],
        unfused_ms=_stats([2 * s for s in speedup]), fused_ms=_stats([2.0, 2.0, 2.0]),
        speedup=_stats(speedup),
    )  # fmt: skip


@pytest.mark.parametrize(
    "unexplained,speedup,same,faster",
    [([0, 0, 0], [1.3, 1.35, 1.32], AGREES, AGREES),
     ([0, 1, 0], [0.8, 0.82, 0.79], DISAGREES, DISAGREES),
     ([0, 0, 0], [1.01, 0.99, 1.0], AGREES, INCONCLUSIVE)],
)  # fmt: skip
def test_fusion_verdicts(unexplained: list, speedup: list, same: str, faster: str) -> None:
    summary = _summary(fusion=_fusion(unexplained, speedup))
    assert _only(summary, "With its batch norms folded") == same
    assert _only(summary, "One pass over") == faster


@pytest.mark.parametrize(
    "batch,other,recommendation,verdict",
    [
        (BAD, GOOD, "frozen batch norm or group norm (not separated by the seeds)", AGREES),
        (GOOD, BAD, "batch norm", DISAGREES),
        (GOOD, GOOD, "inconclusive: the seeds separate none of", INCONCLUSIVE),
    ],
)
def test_finetune_guide_row(batch: list, other: list, recommendation: str, verdict: str) -> None:
    (row,) = TRAIN_EVAL.guide(_summary(finetune=_finetune(batch, other, other)))
    assert row.situation == "fine-tuning with tiny batches"
    assert row.recommendation.startswith(recommendation)
    assert row.verdict == verdict
    assert "from 30.0 ± 0.0 %" in row.evidence  # the accuracy before fine-tuning


@pytest.mark.parametrize(
    "unexplained,speedup,recommendation,verdict",
    [([0, 0, 0], [1.3, 1.35, 1.32], "batch norm folded", AGREES),
     ([0, 1, 0], [1.3, 1.35, 1.32], "keep batch norm unfused", DISAGREES),
     ([0, 0, 0], [1.01, 0.99, 1.0], "inconclusive:", INCONCLUSIVE),
     ([0, 0, 0], [0.8, 0.82, 0.79], "batch norm unfused", DISAGREES)],
)  # fmt: skip
def test_inference_guide_row(
    unexplained: list, speedup: list, recommendation: str, verdict: str
) -> None:
    summary = _summary(fusion=_fusion(unexplained, speedup),
                       statistics=_statistics([0.85, 0.86, 0.85], [0.80, 0.81, 0.80]))  # fmt: skip
    (row,) = TRAIN_EVAL.guide(summary)
    assert row.situation == "inference"
    assert row.recommendation.startswith(recommendation)
    assert row.verdict == verdict
    assert "precise statistics 85.3 ± 0.6 %" in row.evidence
