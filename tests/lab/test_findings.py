"""Each experiment's findings are generated from the numbers: parse each sentence back and
compare with the data; flip the data and the verdict flips."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from normlab.lab.experiment import Curve, SeedStats
from normlab.lab.experiments.compare import COMPARE, CompareSummary, EpochCurves, NormRuns
from normlab.lab.experiments.momentum import MOMENTUM, MomentumPoint, MomentumSummary
from normlab.lab.experiments.placement import PLACEMENT, PlacementRow, PlacementSummary
from normlab.lab.experiments.probes import (
    PROBE,
    ActivationProbes,
    LayerCurves,
    ProbeRuns,
    ProbeSummary,
)
from normlab.lab.experiments.sweep_batch_size import (
    BATCH_SIZE_SWEEP,
    BatchSizePoint,
    BatchSizeSummary,
)
from normlab.lab.experiments.sweep_lr import LR_SWEEP, LrPoint, LrSummary
from normlab.lab.verdicts import AGREES, DISAGREES, INCONCLUSIVE, Finding

lr_findings = LR_SWEEP.findings
batch_size_findings = BATCH_SIZE_SWEEP.findings
compare_findings = COMPARE.findings
probe_findings = PROBE.findings
placement_findings = PLACEMENT.findings
momentum_findings = MOMENTUM.findings

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def numbers_in(text: str) -> list[float]:
    return [float(n) for n in NUMBER.findall(text)]


def assert_numbers_cited(finding: Finding) -> None:
    """Every number the finding says it cites is printed in its sentence."""
    printed = numbers_in(finding.text)
    for name, value in finding.numbers.items():
        assert any(math.isclose(value, p, rel_tol=1e-9, abs_tol=1e-9) for p in printed), (
            f"{name}={value} not in {finding.text!r}"
        )


def stat(values: list[float | None]) -> SeedStats:
    finite = [v for v in values if v is not None]
    if not finite:
        return SeedStats(mean=None, std=None, n=0, values=values)
    mean = sum(finite) / len(finite)
    std = (
        math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
        if len(finite) > 1
        else 0.0
    )
    return SeedStats(mean=mean, std=std, n=len(finite), values=values)


def curve(mean: list[float]) -> Curve:
    """A curve of one seed (std 0)."""
    return Curve(mean=mean, std=[0.0] * len(mean), values=[mean])


# ------------------------------------------------------------------------------ lr sweep
def lr_point(lr: float, accs: list[float | None], diverged: int = 0) -> LrPoint:
    learned = sum(a is not None and a > 0.15 for a in accs)
    return LrPoint(lr=lr, test_accuracy=stat(accs), test_loss=stat([1.0] * len(accs)),
                   diverged=diverged, learned=learned, seeds=len(accs),
                   diverged_at_step=[None] * len(accs), loss_curves=[])  # fmt: skip


def lr_summary(batch_ok_up_to: float, none_ok_up_to: float) -> LrSummary:
    lrs = (0.1, 1.0, 3.0)

    def points(limit: float, acc: float) -> list[LrPoint]:
        return [
            lr_point(lr, [acc, acc + 0.01]) if lr <= limit else lr_point(lr, [None, None], 2)
            for lr in lrs
        ]

    return LrSummary(
        norms={"batch": points(batch_ok_up_to, 0.85), "none": points(none_ok_up_to, 0.7)},
        chance=0.1,
    )


def test_lr_sentence_cites_the_rate_and_accuracy_where_only_batch_norm_trained() -> None:
    summary = lr_summary(batch_ok_up_to=3.0, none_ok_up_to=0.1)
    findings = lr_findings(summary)
    where = [f for f in findings if f.text.startswith("Batch norm trained at lr")]
    assert [f.numbers["lr"] for f in where] == [1.0, 3.0]
    for f in where:
        match = re.match(r"Batch norm trained at lr ([\d.]+) \(([\d.]+) ± ([\d.]+) %\) "
                         r"where the plain network diverged\.", f.text)  # fmt: skip
        assert match, f.text
        point = next(p for p in summary.norms["batch"] if p.lr == float(match[1]))
        assert float(match[2]) == pytest.approx(100 * point.test_accuracy.mean, abs=0.05)
        assert float(match[3]) == pytest.approx(100 * point.test_accuracy.std, abs=0.05)
        assert_numbers_cited(f)
    highest = next(f for f in findings if f.claim)
    assert highest.verdict == AGREES and "Ioffe & Szegedy" in highest.claim
    assert highest.numbers == {"batch_lr": 3.0, "none_lr": 0.1}
    assert "lr 3 with batch norm, lr 0.1 without (30x higher)" in highest.text


def test_lr_failure_wording_counts_seeds() -> None:
    summary = lr_summary(batch_ok_up_to=3.0, none_ok_up_to=1.0)
    summary.norms["none"][2] = lr_point(3.0, [0.5, 0.1])  # one seed learned, one did not
    text = next(f.text for f in lr_findings(summary) if f.text.startswith("Batch norm trained"))
    assert "the plain network learned in only 1 of 2 seeds, stayed near chance otherwise" in text


def test_lr_verdict_follows_the_data() -> None:
    flipped = next(f for f in lr_findings(lr_summary(0.1, 3.0)) if f.claim)
    assert flipped.verdict == DISAGREES
    same = next(f for f in lr_findings(lr_summary(1.0, 1.0)) if f.claim)
    assert same.verdict == INCONCLUSIVE


def test_lr_plain_network_that_never_learned_is_no_evidence() -> None:
    summary = lr_summary(batch_ok_up_to=3.0, none_ok_up_to=3.0)
    summary.norms["none"] = [
        dataclasses.replace(point, test_accuracy=stat([0.11, 0.1]), learned=0)
        for point in summary.norms["none"]
    ]
    findings = lr_findings(summary)
    assert not [f for f in findings if f.text.startswith("Batch norm trained at lr")]
    nowhere = next(f for f in findings if f.text.startswith("Without normalization"))
    assert "best 10.5 % at lr 0.1" in nowhere.text and "3 of 3 rates" in nowhere.text
    assert next(f for f in findings if f.claim).verdict == INCONCLUSIVE


# ---------------------------------------------------------------------------- batch size
def bs_summary(bn_small: float, gn_small: float, large: float = 0.8) -> BatchSizeSummary:
    def points(small: float, large: float) -> list[BatchSizePoint]:
        return [
            BatchSizePoint(batch_size=b, lr=0.1, steps=[1], eval_accuracy=stat([a, a]),
                           batch_stats_accuracy=stat([a - 0.1, a - 0.1]), diverged=0, seeds=2)
            for b, a in ((2, small), (32, (small + large) / 2), (128, large))
        ]  # fmt: skip

    return BatchSizeSummary(
        arms={"batch": points(bn_small, large), "group": points(gn_small, large)},
        examples_seen=1000,
        chance=0.1,
    )


def test_batch_size_findings_cite_their_numbers_and_compare_with_wu_and_he() -> None:
    summary = bs_summary(bn_small=0.55, gn_small=0.79)
    findings = batch_size_findings(summary)
    for f in findings:
        assert_numbers_cited(f)
    batch = next(f for f in findings if f.text.startswith("Batch norm:"))
    # the reference is the batch closest to Wu & He's 32, here 32 itself: (0.55 + 0.8) / 2
    assert batch.numbers["ref_batch"] == 32 and batch.numbers["ref_accuracy"] == 67.5
    assert batch.numbers["small_accuracy"] == 55.0 and batch.numbers["change"] == 12.5
    assert "12.5 points lost" in batch.text and "best 80.0 % at 128" in batch.text
    verdict = next(f for f in findings if f.claim)
    assert verdict.verdict == AGREES and "34.7 %" in verdict.claim
    assert verdict.numbers == {"batch_change": -12.5, "group_change": -0.5}
    reverse = next(f for f in batch_size_findings(bs_summary(0.79, 0.5)) if f.claim)
    assert reverse.verdict == DISAGREES
    flat = next(f for f in batch_size_findings(bs_summary(0.1, 0.1, large=0.1)) if f.claim)
    assert flat.verdict == INCONCLUSIVE  # nothing learned at the reference batch


def test_syncbn_arms_are_compared_when_present() -> None:
    summary = bs_summary(0.55, 0.79)
    summary.arms["syncbn"] = bs_summary(0.7, 0.7).arms["batch"]
    summary.arms["localbn"] = bs_summary(0.3, 0.3).arms["batch"]
    finding = next(f for f in batch_size_findings(summary) if "synchronised" in f.text)
    assert finding.numbers == {"syncbn_accuracy": 70.0, "localbn_accuracy": 30.0}
    assert_numbers_cited(finding)


# ------------------------------------------------------------------------------- compare
def compare_summary(accs: dict[str, list[float]]) -> CompareSummary:
    def runs(i: int, a: list[float]) -> NormRuns:
        return NormRuns(
            seeds=len(a), diverged=0, final_test_accuracy=stat(a),
            final_test_loss=stat([1.0] * len(a)), final_train_loss=stat([1.0] * len(a)),
            seconds_per_epoch=stat([1.0 + i, 1.2 + i]),
            per_epoch=EpochCurves(test_accuracy=curve([0.5, sum(a) / len(a)]),
                                  test_loss=curve([]), train_loss=curve([]),
                                  train_accuracy=curve([])),
            loss_curves=[],
        )  # fmt: skip

    return CompareSummary(
        norms={n: runs(i, a) for i, (n, a) in enumerate(accs.items())}, steps_per_epoch=10
    )


def test_compare_ranking_against_wu_and_he() -> None:
    same_order = compare_summary({"batch": [0.90, 0.91], "group": [0.85, 0.86],
                                  "layer": [0.80, 0.81], "instance": [0.70, 0.71],
                                  "none": [0.5, 0.52]})  # fmt: skip
    findings = compare_findings(same_order)
    for f in findings:
        assert_numbers_cited(f)
    best = findings[0]
    assert best.numbers == {"best_accuracy": 90.5, "none_accuracy": 51.0}
    ranking = next(f for f in findings if f.claim)
    assert ranking.verdict == AGREES
    assert ranking.text.index("batch norm") < ranking.text.index("group norm")
    swapped = compare_summary({"batch": [0.80, 0.81], "group": [0.90, 0.91]})
    assert next(f for f in compare_findings(swapped) if f.claim).verdict == DISAGREES
    tied = compare_summary({"batch": [0.80, 0.90], "group": [0.86, 0.87]})
    tied_finding = next(f for f in compare_findings(tied) if f.claim)
    assert tied_finding.verdict == INCONCLUSIVE and "within one standard deviation" in (
        tied_finding.text
    )


# -------------------------------------------------------------------------------- probes
def probe_summary(bn: float, plain: float, plain_loss: float) -> ProbeSummary:
    def norm(scale: float, loss: float, std_end: float) -> ProbeRuns:
        return ProbeRuns(
            steps=[0, 10],
            smoothness={},
            trajectory_mean={"loss_variation": scale, "gradient_change": 10 * scale,
                             "beta_smoothness": 100 * scale},
            layers={"fc1": LayerCurves(mean=curve([0.0, 0.0]), std=curve([1.0, std_end]),
                                       saturation=curve([0.0, 0.2]), percentiles_seed0=[])},
            diverged=0,
            final_test_accuracy=[0.8, 0.8],
            final_test_loss=[loss, loss],
            num_classes=10,
        )  # fmt: skip

    norms = {"batch": norm(bn, 0.5, 1.1), "none": norm(plain, plain_loss, 3.0)}
    return ProbeSummary(activations={"sigmoid": ActivationProbes(norms=norms)}, step_sizes=[])


def test_probe_smoothness_verdict_and_plateau_note() -> None:
    findings = probe_findings(probe_summary(bn=0.01, plain=0.2, plain_loss=0.6))
    smooth = findings[0]
    assert smooth.verdict == AGREES and "Santurkar" in smooth.claim
    assert smooth.numbers["loss_variation_batch"] == 0.01
    assert smooth.numbers["loss_variation_none"] == 0.2
    assert "(20x)" in smooth.text and "plateau" not in smooth.text
    for f in findings:
        assert_numbers_cited(f)
    worse = probe_findings(probe_summary(bn=0.2, plain=0.01, plain_loss=0.6))[0]
    assert worse.verdict == DISAGREES
    flat = probe_findings(probe_summary(bn=0.2, plain=0.01, plain_loss=math.log(10) + 0.01))[0]
    assert flat.verdict == INCONCLUSIVE  # a plain net stuck on its plateau proves nothing
    assert "within 0.05 of ln 10 = 2.303" in flat.text  # and the sentence says why
    drift = next(f for f in findings if "spread" in f.text)
    assert drift.verdict == AGREES and drift.numbers["none_end"] == 3.0


# ----------------------------------------------------------------------------- placement
def test_placement_difference_against_seed_spread() -> None:
    def row(activation: str, placement: str, accs: list[float]) -> PlacementRow:
        return PlacementRow(activation=activation, placement=placement,
                            test_accuracy=stat(accs), test_loss=stat([1.0, 1.0]),
                            per_epoch_test_accuracy=curve([]), diverged=0, seeds=2)  # fmt: skip

    rows = [
        row("relu", "before", [0.80, 0.81]),
        row("relu", "after", [0.85, 0.86]),
        row("sigmoid", "before", [0.80, 0.90]),
        row("sigmoid", "after", [0.82, 0.86]),
    ]
    relu, sigmoid = placement_findings(PlacementSummary(rows=rows, norm="batch"))
    assert relu.numbers["difference"] == 5.0 and relu.verdict == AGREES  # Mishkin et al.
    assert sigmoid.verdict == INCONCLUSIVE and "within the spread" in sigmoid.text
    for f in (relu, sigmoid):
        assert_numbers_cited(f)


# ------------------------------------------------------------------------------ momentum
def test_momentum_findings() -> None:
    def item(m: float, closed: int | None) -> MomentumPoint:
        return MomentumPoint(momentum=m, steps=[0, 10, 100], eval_accuracy=curve([]),
                             batch_stats_accuracy=curve([]),
                             gap=curve([0.1, 0.3, 0.0 if closed else 0.2]),
                             max_gap_after_start=0.3, closed_at_step=closed,
                             steps_to_forget=math.log(0.05) / math.log(1 - m), diverged=0,
                             seeds=1)  # fmt: skip

    findings = momentum_findings(
        MomentumSummary(momenta=[item(0.01, None), item(0.5, 10)], tolerance=0.01)
    )
    for f in findings[:2]:
        assert_numbers_cited(f)
    assert findings[0].numbers["steps_to_forget"] == 298
    assert "had not closed by step 100 (last gap 20.0 points)" in findings[0].text
    assert findings[-1].verdict == AGREES
    backwards = momentum_findings(
        MomentumSummary(momenta=[item(0.01, 10), item(0.5, None)], tolerance=0.01)
    )
    assert backwards[-1].verdict == DISAGREES
