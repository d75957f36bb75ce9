"""The where-and-when guide: rows computed from constructed summaries (each verdict from
numbers that must give it), their order, the situations left out, the links to sections."""

from __future__ import annotations

import math
import re

import pytest

from normlab.lab.common import curve_mean_std, seed_stats
from normlab.lab.experiment import Curve, ExperimentResult, SeedStats
from normlab.lab.experiments.compare import (
    COMPARE,
    CompareConfig,
    CompareSummary,
    EpochCurves,
    NormRuns,
    compare_guide,
)
from normlab.lab.experiments.sweep_batch_size import (
    BATCH_SIZE_SWEEP,
    BatchSizePoint,
    BatchSizeSummary,
    BatchSizeSweepConfig,
    syncbn_guide,
)
from normlab.lab.experiments.transformer import (
    TRANSFORMER,
    CausalArm,
    TrainedArm,
    TransformerConfig,
    TransformerSummary,
    causal_guide,
    transformer_guide,
    zero_share_bound,
)
from normlab.lab.guide import (
    CAUSAL,
    CNN_LARGE_BATCHES,
    SITUATIONS,
    SYNCBN,
    TRANSFORMERS,
    GuideRow,
    leader_verdict,
    leaders,
    recommendation_text,
    separated,
)
from normlab.lab.report import GUIDE_TITLE, build_report, guide_entries
from normlab.lab.verdicts import AGREES, DISAGREES, INCONCLUSIVE, label
from normlab.report.html import cell_html
from normlab.report.markdown import cell_markdown

NUMBER = re.compile(r"\d+(?:\.\d+)?")


def stats(*values: float) -> SeedStats:
    return seed_stats(list(values))


def assert_cites(row: GuideRow, *values: SeedStats) -> None:
    """Each measurement's mean, as a percentage with one decimal, is printed in the row."""
    printed = [float(n) for n in NUMBER.findall(row.evidence)]
    for value in values:
        assert value.mean is not None
        wanted = round(100 * value.mean, 1)
        assert any(math.isclose(wanted, p, abs_tol=1e-9) for p in printed), row.evidence


# ------------------------------------------------------------------------- the helpers
def test_separated_uses_the_sum_of_the_spreads() -> None:
    a, b = stats(0.80, 0.82), stats(0.76, 0.78)  # means 0.81, 0.77; std 0.0141 each
    assert separated(a, b)  # 0.04 > 0.028
    assert not separated(a, stats(0.79, 0.81))
    assert not separated(a, SeedStats(None, None, 0, [None]))


def test_leaders_and_their_verdict() -> None:
    accuracy = {"batch": stats(0.905, 0.915), "group": stats(0.90, 0.91),
                "none": stats(0.50, 0.52)}  # fmt: skip
    assert leaders(accuracy) == ["batch", "group"]
    assert leader_verdict(accuracy, "batch") == AGREES
    assert leader_verdict(accuracy, "group") == INCONCLUSIVE  # second within the spread
    assert leader_verdict(accuracy, "none") == DISAGREES
    tied = {"batch": stats(0.80, 0.90), "none": stats(0.81, 0.89)}
    assert leader_verdict(tied, "batch") == INCONCLUSIVE
    assert leader_verdict({"none": stats(0.5, 0.5)}, "batch") == INCONCLUSIVE
    assert recommendation_text(leaders(tied), label, total=2).startswith("inconclusive")
    assert recommendation_text(leaders(accuracy), label, 3) == (
        "batch norm or group norm (not separated by the seeds)"
    )
    assert recommendation_text([], label) == "inconclusive: no arm finished"


def test_a_row_refuses_an_unknown_situation_or_verdict() -> None:
    with pytest.raises(ValueError, match="unknown guide situation 'GPUs'"):
        GuideRow("GPUs", "batch norm", "e", "l", AGREES)
    with pytest.raises(ValueError, match="unknown verdict 'maybe'"):
        GuideRow(CNN_LARGE_BATCHES, "batch norm", "e", "l", "maybe")


def test_experiments_without_a_guide_give_no_rows() -> None:
    from normlab.lab.experiments.momentum import MOMENTUM

    assert MOMENTUM.guide(None) == []


# ------------------------------------------------------------------------- compare
def compare_summary(accuracy: dict[str, tuple[float, ...]]) -> CompareSummary:
    def runs(values: tuple[float, ...]) -> NormRuns:
        one = stats(*[1.0] * len(values))
        flat = Curve(mean=[0.5], std=[0.0], values=[[0.5]])
        return NormRuns(
            seeds=len(values), diverged=0, final_test_accuracy=stats(*values),
            final_test_loss=one, final_train_loss=one, seconds_per_epoch=one,
            per_epoch=EpochCurves(flat, flat, flat, flat), loss_curves=[],
        )  # fmt: skip

    return CompareSummary(norms={n: runs(v) for n, v in accuracy.items()}, steps_per_epoch=10)


@pytest.mark.parametrize(
    "batch,verdict",
    [((0.90, 0.91), AGREES), ((0.70, 0.71), DISAGREES), ((0.60, 0.99), INCONCLUSIVE)],
)  # fmt: skip
def test_compare_row(batch: tuple[float, ...], verdict: str) -> None:
    summary = compare_summary({"batch": batch, "torch-batch": (0.95, 0.95),
                               "group": (0.85, 0.86), "none": (0.80, 0.80)})  # fmt: skip
    (row,) = compare_guide(summary)
    assert row.situation == CNN_LARGE_BATCHES and row.verdict == verdict
    assert "torch.nn" not in row.evidence  # the reference twin is not a candidate
    assert_cites(row, *(summary.norms[n].final_test_accuracy for n in ("batch", "group", "none")))
    assert "76.4 %" in row.literature  # Wu & He, batch norm's top-1
    if verdict == AGREES:
        assert row.recommendation == "batch norm"
    if verdict == DISAGREES:
        assert row.recommendation == "group norm"


def test_compare_row_without_finished_runs_is_absent() -> None:
    summary = compare_summary({"batch": ()})
    assert compare_guide(summary) == []


# ------------------------------------------------------------------------- SyncBN
def batch_size_summary(sync: tuple[float, ...], local: tuple[float, ...]) -> BatchSizeSummary:
    def points(values: tuple[float, ...]) -> list[BatchSizePoint]:
        return [BatchSizePoint(batch_size=8, lr=0.025, steps=[4], eval_accuracy=stats(*values),
                               batch_stats_accuracy=stats(*values), diverged=0,
                               seeds=len(values))]  # fmt: skip

    arms = {"batch": points((0.8, 0.8)), "syncbn": points(sync), "localbn": points(local)}
    return BatchSizeSummary(arms=arms, examples_seen=64, chance=0.1)


@pytest.mark.parametrize(
    "local,verdict",
    [((0.60, 0.61), AGREES), ((0.90, 0.91), DISAGREES), ((0.79, 0.81), INCONCLUSIVE)],
)  # fmt: skip
def test_syncbn_row(local: tuple[float, ...], verdict: str) -> None:
    summary = batch_size_summary((0.80, 0.80), local)
    (row,) = syncbn_guide(summary)
    assert row.situation == SYNCBN and row.verdict == verdict
    assert_cites(row, summary.arms["syncbn"][0].eval_accuracy,
                 summary.arms["localbn"][0].eval_accuracy)  # fmt: skip
    if verdict == INCONCLUSIVE:
        assert row.recommendation.startswith("inconclusive")


def test_syncbn_row_needs_both_arms() -> None:
    summary = batch_size_summary((0.8, 0.8), (0.6, 0.6))
    del summary.arms["localbn"]
    assert syncbn_guide(summary) == []


# ------------------------------------------------------------------------- transformer
def trained(norm: str, accuracy: tuple[float, ...], placement: str = "pre") -> TrainedArm:
    one = stats(*[0.5] * len(accuracy))
    return TrainedArm(
        norm=norm, placement=placement, warmup=True, test_accuracy=stats(*accuracy),
        train_loss=one, loss_curve=curve_mean_std([[1.0, 0.5]] * len(accuracy)),
        mean_shift=one, variance_shift=one, diverged=0, seeds=len(accuracy),
    )  # fmt: skip


def causal(norm: str, seen: tuple[float, ...], honest: tuple[float, ...],
           share: tuple[float, ...] | None = None) -> CausalArm:  # fmt: skip
    gaps = [c - s for c, s in zip(honest, seen, strict=True)]
    share = share if share is not None else (0.0,) * len(seen)
    return CausalArm(norm=norm, train_loss=stats(*seen), batch_stats_loss=stats(*seen),
                     running_stats_loss=stats(*honest), row_by_row_loss=stats(*honest),
                     one_sequence_loss=stats(*honest), future_share=stats(*share),
                     leak=stats(*gaps))  # fmt: skip


SHARE_BOUND = zero_share_bound(batch_size=16, width=64, depth=4)  # the study's settings


def transformer_summary(arms: list[TrainedArm], causal_arms: list[CausalArm]) -> TransformerSummary:
    return TransformerSummary(arms=arms, gradients=[], reference=None, causal=causal_arms,
                              depth=4, lr=0.01, warmup_steps=25,
                              share_bound=SHARE_BOUND)  # fmt: skip


@pytest.mark.parametrize(
    "batch,verdict",
    [((0.70, 0.71, 0.70), AGREES), ((0.90, 0.91, 0.90), DISAGREES),
     ((0.80, 0.81, 0.80), INCONCLUSIVE)],
)  # fmt: skip
def test_transformer_row(batch: tuple[float, ...], verdict: str) -> None:
    layer = trained("layer", (0.80, 0.81, 0.80))
    post = trained("batch", (0.1, 0.1, 0.1), placement="post")  # not a pre-LN candidate
    row = transformer_guide(transformer_summary([layer, trained("batch", batch), post], []))
    assert row is not None and row.situation == TRANSFORMERS and row.verdict == verdict
    assert_cites(row, layer.test_accuracy, stats(*batch))
    assert "10.0" not in row.evidence
    if verdict == AGREES:
        assert row.recommendation == "layer norm"


@pytest.mark.parametrize(
    "batch_share,layer_share,verdict,recommendation",
    [
        # batch norm clearly above the rounding bound in every seed, layer norm at zero
        ((0.135, 0.137, 0.133), (0.0, 0.0, 0.0), AGREES, "layer norm"),
        # layer norm's residue below the bound still counts as zero
        ((0.135, 0.137, 0.133), (0.0, 1e-7, 0.0), AGREES, "layer norm"),
        # batch norm zero up to rounding: no leak where the claim expects one
        ((0.0, 1e-7, 0.0), (0.0, 0.0, 0.0), DISAGREES, "batch norm or layer norm"),
        # layer norm clearly above the bound: a leak where the claim expects none
        ((0.135, 0.137, 0.133), (0.05, 0.06, 0.05), DISAGREES,
         "inconclusive: no norm's later-rows share is zero up to rounding"),
        # batch norm above the bound in one seed only: not separated from zero
        ((0.0, 0.2, 0.0), (0.0, 0.0, 0.0), INCONCLUSIVE, "layer norm"),
    ],
)  # fmt: skip
def test_causal_row_rests_on_the_later_rows_share(
    batch_share: tuple[float, ...], layer_share: tuple[float, ...], verdict: str,
    recommendation: str,
) -> None:  # fmt: skip
    # the loss gap says the opposite of the shares in every case: the row must not read it
    layer = causal("layer", (0.08, 0.081, 0.08), (0.08, 0.081, 0.08), layer_share)
    batch = causal("batch", (0.1, 0.1, 0.1), (0.06, 0.061, 0.06), batch_share)
    row = causal_guide(transformer_summary([], [layer, batch]))
    assert row is not None and row.situation == CAUSAL
    assert row.verdict == verdict, row.evidence
    assert row.recommendation == recommendation
    # the share of each arm, the rounding bound, then the loss gap as the consequence
    share_part, loss_part = row.evidence.split("Consequence")
    for arm in (layer, batch):
        mean, std = arm.future_share.mean, arm.future_share.std
        assert f"{label(arm.norm)} {100 * mean:.1f} ± {100 * std:.1f} %" in share_part
        assert f"gap {arm.leak.mean:.3g}" in loss_part
    assert f"at most {100 * SHARE_BOUND:.2g} %" in share_part
    assert causal_guide(transformer_summary([], [])) is None


def test_causal_row_needs_a_per_token_norm_to_agree() -> None:
    batch = causal("batch", (0.1, 0.1, 0.1), (0.14, 0.15, 0.14), (0.135, 0.137, 0.133))
    row = causal_guide(transformer_summary([], [batch]))
    assert row is not None and row.verdict == INCONCLUSIVE
    rms = causal("rms", (0.08, 0.08, 0.08), (0.08, 0.08, 0.08))
    row = causal_guide(transformer_summary([], [batch, rms]))
    assert row is not None and row.verdict == AGREES and row.recommendation == "RMS norm"


# ------------------------------------------------------------------------- the report
def results(*names: str) -> dict[str, ExperimentResult]:
    made = {
        "compare": ExperimentResult(
            "compare", CompareConfig(), 2,
            compare_summary({"batch": (0.90, 0.91), "group": (0.85, 0.86)}),
        ),
        "sweep-batch-size": ExperimentResult(
            "sweep-batch-size", BatchSizeSweepConfig(), 2,
            batch_size_summary((0.80, 0.80), (0.6, 0.61)),
        ),
        "transformer": ExperimentResult(
            "transformer", TransformerConfig(), 2,
            transformer_summary(
                [trained("layer", (0.8, 0.81, 0.8)), trained("batch", (0.7, 0.71, 0.7))],
                [causal("layer", (0.08, 0.08, 0.08), (0.08, 0.08, 0.08)),
                 causal("batch", (0.1, 0.1, 0.1), (0.14, 0.15, 0.14), (0.13, 0.14, 0.13))],
            ),
        ),
    }  # fmt: skip
    return {name: made[name] for name in names}


def test_rows_follow_the_situations_order_whatever_the_experiments_order() -> None:
    entries = guide_entries(results("transformer", "sweep-batch-size", "compare"))
    situations = [e.row.situation for e in entries]
    assert situations == [CNN_LARGE_BATCHES, SYNCBN, TRANSFORMERS, CAUSAL]
    assert situations == sorted(situations, key=SITUATIONS.index)
    assert [e.experiment for e in entries] == [COMPARE, BATCH_SIZE_SWEEP, TRANSFORMER,
                                               TRANSFORMER]  # fmt: skip


def test_situations_not_run_are_left_out() -> None:
    report, _ = build_report(results("compare"), {}, title="t")
    html = report.to_html()
    assert GUIDE_TITLE in html and CNN_LARGE_BATCHES in html
    for situation in SITUATIONS[1:]:
        assert f"<td>{situation}</td>" not in html


def test_no_rows_no_guide_section() -> None:
    empty = results("compare")
    empty["compare"] = ExperimentResult("compare", CompareConfig(), 0, compare_summary({}))
    report, _ = build_report(empty, {}, title="t")
    assert GUIDE_TITLE not in [h.text for h in report.sections]


def test_the_guide_opens_the_report_and_links_to_existing_sections() -> None:
    report, _ = build_report(results("compare", "sweep-batch-size", "transformer"), {},
                             title="t")  # fmt: skip
    assert report.sections[0].text == GUIDE_TITLE
    html = report.to_html()
    guide = html.split(f">{GUIDE_TITLE}</h2>")[1].split("</table>")[0]
    links = re.findall(r'<a href="#([^"]+)">([^<]+)</a>', guide)
    assert len(links) == 4
    anchors = {h.anchor: h.text for h in report.sections}
    for anchor, text in links:
        assert anchors[anchor] == text  # a link to that experiment's own section
    assert {text for _, text in links} == {COMPARE.title, BATCH_SIZE_SWEEP.title,
                                           TRANSFORMER.title}  # fmt: skip


def test_links_in_table_cells() -> None:
    text = "a < b [Small batches](#small-batches) [not](http://x) [x](#y-2)."
    link = '<a href="#small-batches">Small batches</a>'
    assert cell_html(text) == f'a &lt; b {link} [not](http://x) <a href="#y-2">x</a>.'
    assert cell_markdown(text) == (
        r"a \< b [Small batches](#small-batches) \[not\]\(http://x\) [x](#y-2)."
    )
