"""The transformer experiment: its cells, a tiny run whose summary reads back from JSON,
its measurements against their formulas, and each claim's verdict on constructed numbers."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from normlab.data import synthetic_dataset
from normlab.errors import UsageError
from normlab.lab.cells import to_jsonable
from normlab.lab.common import curve_mean_std, seed_stats
from normlab.lab.experiment import SeedStats
from normlab.lab.experiments.transformer import (
    LEAKS,
    NO_LEAK,
    TRANSFORMER,
    UNCLEAR,
    BatchStatsMonitor,
    CausalArm,
    FluctuationReference,
    InitGradients,
    TrainedArm,
    TransformerConfig,
    TransformerSummary,
    batch_accuracy_finding,
    directional_verdict,
    dyt_finding,
    fluctuation_finding,
    future_share,
    gradient_finding,
    influence_finding,
    leak_finding,
    leak_status,
    leak_verdict,
    lr_factor,
    match_verdict,
    next_row_losses,
    warmup_finding,
    zero_share_bound,
)
from normlab.lab.serialize import from_jsonable
from normlab.lab.study import run_experiment
from normlab.lab.verdicts import AGREES, DISAGREES, INCONCLUSIVE, Finding
from normlab.models.vit import NextRowTransformer
from normlab.testing.tolerance import CONFIDENCE, assert_close_sum, unit_roundoff

TINY = TransformerConfig(
    norms=("layer", "batch"), warmup_norms=("layer",), causal_norms=("layer", "batch"),
    seeds=2, epochs=1, dataset="synthetic", train_subset=64, test_subset=16, batch_size=16,
    causal_batch_size=8, width=8, depth=2, heads=2, warmup_steps=2, gradient_batches=1,
)  # fmt: skip


# =================================================================================== cells
def test_cells_cover_every_setting_and_seed() -> None:
    keys = [c.key for c in TRANSFORMER.cells(TINY)]
    assert len(keys) == len(set(keys))
    # 2 norms pre-LN with warm-up + 3 more layer-norm arms; gradients for 2 norms x 2
    # placements; the LeNet reference (batch is a norm); 2 next-row norms; x 2 seeds
    assert len(keys) == (5 + 4 + 1 + 2) * 2
    assert keys[:2] == [
        "transformer/task=classify,norm=layer,placement=pre,warmup=on/seed=0",
        "transformer/task=classify,norm=layer,placement=pre,warmup=on/seed=1",
    ]
    assert "transformer/task=classify,norm=layer,placement=post,warmup=off/seed=1" in keys
    assert "transformer/task=init-gradients,norm=batch,placement=post/seed=0" in keys
    assert "transformer/task=cnn-reference,norm=batch/seed=1" in keys
    assert "transformer/task=next-row,norm=batch/seed=0" in keys
    without_batch = dataclasses.replace(TINY, norms=("layer",))
    assert not any("cnn-reference" in c.key for c in TRANSFORMER.cells(without_batch))


@pytest.fixture(scope="module")
def tiny_run() -> TransformerSummary:
    result = run_experiment(TRANSFORMER, TINY, synthetic_dataset(64, 16, seed=0), progress=False)
    return result.summary


def test_tiny_run_summary_is_complete(tiny_run: TransformerSummary) -> None:
    arms = [(a.norm, a.placement, a.warmup) for a in tiny_run.arms]
    assert arms == [
        ("layer", "pre", True), ("batch", "pre", True), ("layer", "pre", False),
        ("layer", "post", True), ("layer", "post", False),
    ]  # fmt: skip
    for arm in tiny_run.arms:
        assert arm.seeds == 2 and arm.test_accuracy.n + arm.diverged >= 2
        assert arm.train_loss.values[0] != arm.train_loss.values[1]  # seeds differ
        has_batch_norm = arm.norm == "batch"
        assert (arm.variance_shift.mean is not None) == has_batch_norm
    for gradients in tiny_run.gradients:
        assert len(gradients.per_layer.values) == 2 and len(gradients.per_layer.mean) == 2
    assert tiny_run.reference is not None and tiny_run.reference.variance_shift.n == 2
    assert [c.norm for c in tiny_run.causal] == ["layer", "batch"]
    layer = tiny_run.causal[0]
    # per token, the three ways to measure agree up to rounding: no leak
    assert layer.leak.mean is not None and abs(layer.leak.mean) < 1e-5


def test_summary_round_trips_through_json(tiny_run: TransformerSummary) -> None:
    stored = json.loads(json.dumps(to_jsonable(tiny_run)))
    assert from_jsonable(TransformerSummary, stored) == tiny_run


def test_report_pieces(tiny_run: TransformerSummary) -> None:
    table = TRANSFORMER.table(tiny_run)
    assert len(table.rows) == len(tiny_run.arms) + len(tiny_run.causal)
    stems = [spec.stem for spec in TRANSFORMER.figures(tiny_run)]
    assert stems == [
        "transformer-accuracy", "transformer-gradients", "transformer-warmup",
        "transformer-causal",
    ]  # fmt: skip
    for finding in TRANSFORMER.findings(tiny_run):
        _assert_cites_its_numbers(finding)


def test_a_killed_run_resumes_without_redoing_a_cell(kill_and_resume) -> None:
    config = dataclasses.replace(TINY, norms=("layer",), warmup_norms=(), causal_norms=("layer",),
                                 seeds=1)  # fmt: skip
    data = synthetic_dataset(64, 16, seed=0)
    run = kill_and_resume("transformer", config, data, after=2)
    assert len(run.resumed_cells) == 4  # 1 arm, gradients pre and post, 1 next-row model
    assert sorted(run.read_back) == sorted(run.before_kill)
    fresh = run_experiment(TRANSFORMER, config, data, progress=False)
    assert run.resumed.summary == fresh.summary


def test_runs_as_its_own_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from normlab.cli.main import main

    argv = ["sweep", "transformer", "--dataset", "synthetic", "--train-subset", "64",
            "--test-subset", "16", "--epochs", "1", "--seeds", "1", "--norms", "layer",
            "--warmup-norms", "layer", "--causal-norms", "batch", "--width", "8", "--depth",
            "1", "--workers", "1", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = Path(out.strip().splitlines()[-1])
    assert "Normalization in a transformer" in report.read_text(encoding="utf-8")
    assert len(list((report.parent / "cells").glob("*/*.json"))) == 4 + 2 + 1
    assert main([*argv[:2], "--width", "10"]) == 2
    assert "width (10) must be a multiple of heads (4)" in capsys.readouterr().err


def test_config_errors_are_one_line() -> None:
    cases = {
        "unknown norm 'nope'": dict(norms=("nope",)),
        "width \\(10\\) must be a multiple of heads \\(4\\)": dict(width=10),
        "patch_size must divide 28, got 5": dict(patch_size=5),
        "causal_batch_size must be an integer >= 2, got 1": dict(causal_batch_size=1),
        "warmup_steps must be an integer >= 1, got 0": dict(warmup_steps=0),
    }
    for message, change in cases.items():
        with pytest.raises(UsageError, match=message):
            dataclasses.replace(TransformerConfig(), **change).validate()
    for quick in (False, True):
        TRANSFORMER.study_config(quick=quick, dataset="fashion-mnist", device="cpu",
                                 syncbn=False).validate()  # fmt: skip


# ============================================================================ measurements
def test_lr_schedule_warms_up_then_decays() -> None:
    assert [lr_factor(s, 10, 4) for s in range(10)] == [
        0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6
    ]  # fmt: skip
    assert [lr_factor(s, 4, 0) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


def test_batch_stats_monitor_measures_the_formula() -> None:
    norm = torch.nn.BatchNorm2d(3).double()
    norm.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    norm.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
    monitor = BatchStatsMonitor(norm)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 1.5 + 0.3
    norm(x)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
    running_mean = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    running_var = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    expected_mean = ((mean - running_mean).abs() / (running_var + norm.eps).sqrt()).mean()
    expected_var = ((var - running_var).abs() / (running_var + norm.eps)).mean()
    ((step, mean_shift, var_shift),) = monitor.records
    assert step == 0
    terms = x[:, 0].numel()
    assert_close_sum(torch.tensor(mean_shift, dtype=torch.float64), expected_mean, terms=terms,
                     abs_sum=x.abs().max() * 4, dtype=torch.float64)  # fmt: skip
    assert_close_sum(torch.tensor(var_shift, dtype=torch.float64), expected_var, terms=terms,
                     abs_sum=x.pow(2).max() * 4, dtype=torch.float64)  # fmt: skip
    norm.eval()
    norm(x)
    assert len(monitor.records) == 1  # eval mode uses no batch statistics
    monitor.remove()
    norm.train()(x)
    assert len(monitor.records) == 1
    assert monitor.shifts(from_step=1) == (None, None)


def test_layer_norm_has_no_leak_and_batch_norm_has() -> None:
    images = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8)
    torch.manual_seed(0)
    layer = NextRowTransformer("layer", width=8, depth=1, heads=2)
    losses = next_row_losses(layer, images, batch_size=4)
    same = losses["batch_stats_loss"]
    for key in ("running_stats_loss", "row_by_row_loss", "one_sequence_loss"):
        # the same predictions, summed in other orders: float32 rounding of ~1e3 terms
        assert abs(losses[key] - same) <= 1e-5 * same, key
    assert future_share(layer, images[:4]) == 0.0  # exactly: masked and per token
    batch = NextRowTransformer("batch", width=8, depth=1, heads=2)
    assert future_share(batch, images[:4]) > 1e-3
    losses = next_row_losses(batch, images, batch_size=4)
    assert abs(losses["row_by_row_loss"] - losses["batch_stats_loss"]) > 1e-3
    assert abs(losses["one_sequence_loss"] - losses["batch_stats_loss"]) > 1e-3


# ================================================================================ verdicts
def test_verdict_rules() -> None:
    assert directional_verdict(2.0, 1.0) == AGREES
    assert directional_verdict(-2.0, 1.0) == DISAGREES
    assert directional_verdict(0.5, 1.0) == INCONCLUSIVE
    assert directional_verdict(-2.0, 1.0, expected_positive=False) == AGREES
    assert match_verdict(0.3, 0.5, margin=1.0) == AGREES
    assert match_verdict(-2.5, 0.5, margin=1.0) == DISAGREES
    assert match_verdict(0.8, 0.5, margin=1.0) == INCONCLUSIVE


def _stats(*values: float) -> SeedStats:
    return seed_stats(list(values))


def _arm(norm: str, placement: str, warmup: bool, accuracy: tuple[float, ...],
         variance_shift: tuple[float, ...] = ()) -> TrainedArm:  # fmt: skip
    return TrainedArm(
        norm=norm, placement=placement, warmup=warmup, test_accuracy=_stats(*accuracy),
        train_loss=_stats(0.5, 0.6, 0.55), loss_curve=curve_mean_std([[1.0, 0.5]] * 3),
        mean_shift=_stats(*(v / 2 for v in variance_shift)),
        variance_shift=_stats(*variance_shift), diverged=0, seeds=len(accuracy),
    )  # fmt: skip


def _summary(
    arms: list[TrainedArm] | None = None,
    gradients: list[InitGradients] | None = None,
    reference: FluctuationReference | None = None,
    causal: list[CausalArm] | None = None,
) -> TransformerSummary:
    return TransformerSummary(arms=arms or [], gradients=gradients or [], reference=reference,
                              causal=causal or [], depth=4, lr=0.01, warmup_steps=25,
                              share_bound=BOUND)  # fmt: skip


def _assert_cites_its_numbers(finding: Finding) -> None:
    printed = [float(n) for n in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", finding.text)]
    for value in finding.numbers.values():
        assert any(math.isclose(value, p, abs_tol=1e-9) for p in printed), finding.text


def _check(finding: Finding | None, verdict: str) -> None:
    assert finding is not None
    assert finding.verdict == verdict, finding.sentence()
    _assert_cites_its_numbers(finding)


@pytest.mark.parametrize(
    "post_without,verdict",
    [((0.20, 0.25, 0.22), AGREES), ((0.90, 0.91, 0.92), DISAGREES),
     ((0.80, 0.81, 0.79), INCONCLUSIVE)],
)  # fmt: skip
def test_warmup_verdicts(post_without: tuple[float, ...], verdict: str) -> None:
    arms = [
        _arm("layer", "pre", True, (0.80, 0.81, 0.79)),
        _arm("layer", "pre", False, (0.80, 0.80, 0.81)),
        _arm("layer", "post", True, (0.80, 0.81, 0.80)),
        _arm("layer", "post", False, post_without),
    ]
    _check(warmup_finding(_summary(arms)), verdict)
    assert warmup_finding(_summary(arms[:3])) is None


def _gradients(placement: str, per_layer: list[list[float]]) -> InitGradients:
    return InitGradients(norm="layer", placement=placement, per_layer=curve_mean_std(per_layer),
                         last_to_first=_stats(*(g[-1] / g[0] for g in per_layer)))  # fmt: skip


@pytest.mark.parametrize(
    "post,verdict",
    [([[1.0, 2.0], [1.0, 2.1]], AGREES), ([[2.0, 1.0], [2.1, 1.0]], DISAGREES),
     ([[1.0, 1.0], [1.0, 1.01]], INCONCLUSIVE)],
)  # fmt: skip
def test_gradient_verdicts(post: list[list[float]], verdict: str) -> None:
    pre = _gradients("pre", [[1.0, 1.0], [1.0, 1.0]])
    _check(gradient_finding(_summary(gradients=[pre, _gradients("post", post)])), verdict)


@pytest.mark.parametrize(
    "dyt,verdict",
    [((0.800, 0.801, 0.802), AGREES), ((0.70, 0.71, 0.70), DISAGREES),
     ((0.79, 0.81, 0.80), INCONCLUSIVE)],
)  # fmt: skip
def test_dyt_verdicts(dyt: tuple[float, ...], verdict: str) -> None:
    arms = [_arm("layer", "pre", True, (0.801, 0.802, 0.803)), _arm("dyt", "pre", True, dyt)]
    _check(dyt_finding(_summary(arms)), verdict)


@pytest.mark.parametrize(
    "batch,verdict",
    [((0.70, 0.71, 0.70), AGREES), ((0.90, 0.91, 0.90), DISAGREES),
     ((0.80, 0.81, 0.80), INCONCLUSIVE)],
)  # fmt: skip
def test_batch_norm_accuracy_verdicts(batch: tuple[float, ...], verdict: str) -> None:
    arms = [_arm("layer", "pre", True, (0.80, 0.81, 0.80)), _arm("batch", "pre", True, batch)]
    _check(batch_accuracy_finding(_summary(arms)), verdict)


@pytest.mark.parametrize(
    "vit,verdict",
    [((0.5, 0.52, 0.51), AGREES), ((0.05, 0.051, 0.052), DISAGREES),
     ((0.1, 0.11, 0.1), INCONCLUSIVE)],
)  # fmt: skip
def test_fluctuation_verdicts(vit: tuple[float, ...], verdict: str) -> None:
    arms = [_arm("batch", "pre", True, (0.8, 0.8, 0.81), variance_shift=vit)]
    cnn = FluctuationReference(mean_shift=_stats(0.05, 0.05, 0.05),
                               variance_shift=_stats(0.1, 0.11, 0.1),
                               test_accuracy=_stats(0.8, 0.8, 0.8))  # fmt: skip
    _check(fluctuation_finding(_summary(arms, reference=cnn)), verdict)
    assert fluctuation_finding(_summary(arms)) is None


def _causal(norm: str, seen: tuple[float, ...], causal: tuple[float, ...],
            future: tuple[float, ...] = (0.0, 0.0, 0.0)) -> CausalArm:  # fmt: skip
    gaps = [c - s for c, s in zip(causal, seen, strict=True)]
    return CausalArm(norm=norm, train_loss=_stats(*seen), batch_stats_loss=_stats(*seen),
                     running_stats_loss=_stats(*causal), row_by_row_loss=_stats(*causal),
                     one_sequence_loss=_stats(*causal), future_share=_stats(*future),
                     leak=_stats(*gaps))  # fmt: skip


@pytest.mark.parametrize(
    "future,verdict",
    [((0.05, 0.06, 0.05), AGREES), ((0.0, 0.0, 0.0), DISAGREES),
     ((0.0, 0.05, 0.0), INCONCLUSIVE)],
)  # fmt: skip
def test_influence_verdicts(future: tuple[float, ...], verdict: str) -> None:
    layer = _causal("layer", (0.08, 0.08, 0.08), (0.08, 0.08, 0.08))
    batch = _causal("batch", (0.1, 0.1, 0.1), (0.1, 0.1, 0.1), future)
    _check(influence_finding(_summary(causal=[layer, batch])), verdict)
    # layer norm moved by later rows more than batch norm: the claim is contradicted
    swapped = [dataclasses.replace(layer, future_share=_stats(0.05, 0.06, 0.05)),
               dataclasses.replace(batch, future_share=_stats(0.0, 0.0, 0.0))]  # fmt: skip
    _check(influence_finding(_summary(causal=swapped)), DISAGREES)


# ========================================================================= the leak's rule
BOUND = zero_share_bound(batch_size=16, width=64, depth=4)  # the study's settings


def test_zero_share_bound_is_the_float32_sum_bound() -> None:
    # 2 lam sqrt(n) u, n = 16 sequences x 27 rows x 128 hidden features x 4 blocks
    terms = 16 * 27 * 128 * 4
    expected = 2 * CONFIDENCE * math.sqrt(terms) * unit_roundoff(torch.float32)
    assert math.isclose(BOUND, expected, rel_tol=1e-12)
    assert 1e-4 < BOUND < 1e-3  # far below batch norm's measured share, far above zero
    assert zero_share_bound(4, 64, 4) == pytest.approx(BOUND / 2, rel=1e-12)  # sqrt(n)


@pytest.mark.parametrize(
    "share,status",
    [((0.0, 0.0, 0.0), NO_LEAK), ((0.0, 0.135, 0.0), UNCLEAR),
     ((0.135, 0.137, 0.133), LEAKS), ((0.135,), UNCLEAR)],
)  # fmt: skip
def test_leak_status(share: tuple[float, ...], status: str) -> None:
    # one seed above the bound among zeros, or a single seed: not separated from zero
    assert leak_status(_stats(*share), BOUND) == status


def test_leak_status_edges() -> None:
    assert leak_status(_stats(BOUND, BOUND, 0.0), BOUND) == NO_LEAK  # at the bound: rounding
    assert leak_status(_stats(2 * BOUND, 2.1 * BOUND, 2 * BOUND), BOUND) == LEAKS
    # every seed above the bound, but the spread reaches down to it: not clear
    assert leak_status(_stats(1.1 * BOUND, 5 * BOUND, 1.1 * BOUND), BOUND) == UNCLEAR
    assert leak_status(_stats(math.nan, math.nan), BOUND) == UNCLEAR  # nothing finished


def test_leak_verdict() -> None:
    leak, zero = _stats(0.135, 0.137, 0.133), _stats(0.0, 0.0, 0.0)
    assert leak_verdict({"batch": leak, "layer": zero, "rms": zero}, BOUND) == AGREES
    assert leak_verdict({"batch": zero, "layer": zero}, BOUND) == DISAGREES
    assert leak_verdict({"batch": leak, "rms": leak}, BOUND) == DISAGREES
    assert leak_verdict({"batch": leak}, BOUND) == INCONCLUSIVE  # no per-token norm
    assert leak_verdict({"batch": leak, "dyt": zero}, BOUND) == INCONCLUSIVE
    assert leak_verdict({"batch": _stats(0.0, 0.2, 0.0), "layer": zero}, BOUND) == INCONCLUSIVE


@pytest.mark.parametrize(
    "batch_causal,verdict",
    [((0.14, 0.15, 0.14), AGREES), ((0.06, 0.061, 0.06), DISAGREES),
     ((0.1, 0.1005, 0.1), INCONCLUSIVE)],
)  # fmt: skip
def test_leak_verdicts(batch_causal: tuple[float, ...], verdict: str) -> None:
    layer = _causal("layer", (0.08, 0.081, 0.08), (0.08, 0.081, 0.08))
    batch = _causal("batch", (0.1, 0.1, 0.1), batch_causal)
    _check(leak_finding(_summary(causal=[layer, batch])), verdict)
