"""The small-batch experiment: the two-class sampler, the cells, a tiny run read back from
JSON, each claim's verdicts and the guide's rows on constructed numbers."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from normlab.data import synthetic_dataset
from normlab.data.two_class_batches import two_class_batches
from normlab.errors import UsageError
from normlab.lab.cells import to_jsonable
from normlab.lab.common import seed_stats
from normlab.lab.experiment import SeedStats
from normlab.lab.experiments.small_batch import (
    IID,
    SMALL_BATCH,
    TWO_CLASS,
    SmallBatchConfig,
    SmallBatchPoint,
    SmallBatchSummary,
    frn_finding,
    gn_ws_finding,
    iid_batches,
    renorm_micro_finding,
    renorm_non_iid_finding,
    small_batch_guide,
)
from normlab.lab.guide import MICRO_BATCHES, NON_IID
from normlab.lab.serialize import from_jsonable
from normlab.lab.study import run_experiment
from normlab.lab.verdicts import AGREES, DISAGREES, INCONCLUSIVE, Finding

TINY = SmallBatchConfig(norms=("batch", "group-ws"), batch_sizes=(4, 16), non_iid_batch_sizes=(8,),
                        seeds=2, dataset="synthetic", train_subset=64, test_subset=32)  # fmt: skip


# ============================================================================ the sampler
def balanced_labels(per_class: int, classes: int = 10) -> torch.Tensor:
    labels = torch.arange(classes).repeat(per_class)
    return labels[torch.randperm(labels.numel())]


@pytest.mark.parametrize("batch_size", [2, 4, 8, 32])
def test_two_class_batches_hold_two_classes_half_each_every_image_once(batch_size: int) -> None:
    labels = balanced_labels(per_class=64)
    batches = two_class_batches(labels, batch_size, seed=3, epoch=1)
    for batch in batches:
        assert batch.shape == (batch_size,) and batch.dtype == torch.int64
        counts = torch.bincount(labels[batch], minlength=10)
        assert sorted(counts[counts > 0].tolist()) == [batch_size // 2] * 2
    used = torch.cat(batches)
    assert used.unique().numel() == used.numel()  # no image twice
    # 64 per class is a multiple of every half and 10 equal classes pair up: all used
    assert used.numel() == labels.numel()


def test_two_class_batches_mix_the_classes_within_a_batch() -> None:
    labels = balanced_labels(per_class=64)
    batches = two_class_batches(labels, 32, seed=0, epoch=0)
    # the first 16 images of a batch are not all one class (ghost batch norm's chunks)
    assert any(labels[b[:16]].unique().numel() == 2 for b in batches)


def test_two_class_batches_leave_out_what_does_not_fill_a_half_or_a_pair() -> None:
    counts = [13, 9, 7]  # halves of 4: 3, 2, 1 (remainders 1, 1, 3 left out); 6 halves
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    batches = two_class_batches(labels, 8, seed=1, epoch=0)
    assert len(batches) == 3  # 6 halves, no class holds more than half of them
    used = torch.cat(batches)
    left_out = torch.bincount(labels[used], minlength=3)
    assert left_out.tolist() == [12, 8, 4]
    lopsided = torch.cat([torch.zeros(40, dtype=torch.int64), torch.ones(8, dtype=torch.int64)])
    pairs = two_class_batches(lopsided, 8, seed=0, epoch=0)
    assert len(pairs) == 2  # class 1 has two halves: class 0's other eight are unpaired
    for batch in pairs:
        assert torch.bincount(lopsided[batch]).tolist() == [4, 4]


def test_two_class_order_depends_on_seed_and_epoch_only() -> None:
    labels = balanced_labels(per_class=16)
    first = two_class_batches(labels, 4, seed=5, epoch=2)
    again = two_class_batches(labels, 4, seed=5, epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other = two_class_batches(labels, 4, seed=5, epoch=3)
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize(
    "batch_size,message",
    [(3, "batch_size must be even, got 3"), (0, "batch_size >= 2, got 0"),
     (True, "batch_size >= 2, got True")],
)  # fmt: skip
def test_two_class_batch_size_errors(batch_size: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        two_class_batches(torch.zeros(8, dtype=torch.int64), batch_size, seed=0)  # type: ignore[arg-type]


def test_iid_batches_are_a_permutation_cut_into_full_batches() -> None:
    batches = iid_batches(10, 4, seed=0, epoch=0)
    assert [b.numel() for b in batches] == [4, 4]
    assert torch.cat(batches).unique().numel() == 8


# ================================================================================ cells
def test_cells_cover_every_norm_sampling_size_and_seed() -> None:
    keys = [c.key for c in SMALL_BATCH.cells(TINY)]
    assert len(keys) == len(set(keys)) == 2 * (2 + 1) * 2
    assert keys[0] == "small-batch/norm=batch,sampling=iid,batch_size=4/seed=0"
    assert "small-batch/norm=group-ws,sampling=two-class,batch_size=8/seed=1" in keys
    costs = {c.params["batch_size"]: c.cost for c in SMALL_BATCH.cells(TINY)}
    assert costs[4] > costs[16]  # more steps at smaller batches


@pytest.mark.parametrize(
    "changes,message",
    [({"non_iid_batch_sizes": (6, 7)}, "batch_size must be even, got 7"),
     ({"batch_sizes": (1, 4)}, "batch_sizes must be an integer >= 2"),
     ({"batch_sizes": ()}, "batch_sizes must not be empty"),
     ({"batch_sizes": (4, 4)}, "without repeats"),
     ({"norms": ("batch", "nope")}, "nope")],
)  # fmt: skip
def test_config_errors_are_one_line(changes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        dataclasses.replace(TINY, **changes).validate()
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def tiny_run() -> SmallBatchSummary:
    return run_experiment(SMALL_BATCH, TINY, synthetic_dataset(64, 32, seed=0),
                          progress=False).summary  # fmt: skip


def test_tiny_run_summary_is_complete(tiny_run: SmallBatchSummary) -> None:
    assert list(tiny_run.points) == [IID, TWO_CLASS]
    assert [p.batch_size for p in tiny_run.points[IID]["batch"]] == [4, 16]
    assert [p.batch_size for p in tiny_run.points[TWO_CLASS]["group-ws"]] == [8]
    labels = synthetic_dataset(64, 32, seed=0).train_labels
    halves = int((torch.bincount(labels) // 4).sum())  # two-class batches of 8: halves of 4
    for sampling, norms in tiny_run.points.items():
        for points in norms.values():
            for p in points:
                assert p.seeds == 2 and p.eval_accuracy.n + p.diverged == 2
                steps = 64 // p.batch_size if sampling == IID else halves // 2
                assert p.steps == [steps] * 2
                assert math.isclose(p.lr, 0.02 * p.batch_size / 32)
    group_ws = tiny_run.points[IID]["group-ws"][0]
    # batch-independent: the test batch's statistics change nothing
    assert group_ws.batch_stats_accuracy.values == group_ws.eval_accuracy.values
    loss_seeds = tiny_run.points[IID]["batch"][0]
    assert loss_seeds.eval_accuracy.values[0] is not None
    assert tiny_run.examples_seen == 64 and tiny_run.chance == 0.1


def test_seeds_differ(tiny_run: SmallBatchSummary) -> None:
    values = [tuple(p.eval_accuracy.values) for pts in tiny_run.points[IID].values() for p in pts]
    assert any(v[0] != v[1] for v in values)


def test_summary_round_trips_through_json(tiny_run: SmallBatchSummary) -> None:
    stored = json.loads(json.dumps(to_jsonable(tiny_run)))
    assert from_jsonable(SmallBatchSummary, stored) == tiny_run


def test_report_pieces(tiny_run: SmallBatchSummary) -> None:
    table = SMALL_BATCH.table(tiny_run)
    assert len(table.rows) == 2 * 2 + 2 * 1
    assert [spec.stem for spec in SMALL_BATCH.figures(tiny_run)] == ["small-batch"]
    for finding in SMALL_BATCH.findings(tiny_run):
        assert_cites(finding)
    assert [row.situation for row in SMALL_BATCH.guide(tiny_run)] == [MICRO_BATCHES, NON_IID]


# =========================================================================== verdicts
def stats(*values: float) -> SeedStats:
    return seed_stats(list(values))


def assert_cites(finding: Finding) -> None:
    printed = [abs(float(n)) for n in re.findall(r"[-+]?\d+(?:\.\d+)?", finding.text)]
    for key, value in finding.numbers.items():
        assert any(math.isclose(abs(value), p, abs_tol=1e-9) for p in printed), (key, finding.text)


Sizes = dict[str, dict[int, tuple[float, ...]]]


def summary(iid: Sizes,
            two_class: Sizes | None = None) -> SmallBatchSummary:  # fmt: skip
    def points(by_size: dict[int, tuple[float, ...]]) -> list[SmallBatchPoint]:
        return [SmallBatchPoint(batch_size=b, lr=0.02 * b / 32, steps=[64 // b] * len(v),
                                eval_accuracy=stats(*v), batch_stats_accuracy=stats(*v),
                                diverged=0, seeds=len(v))
                for b, v in sorted(by_size.items())]  # fmt: skip

    out = {IID: {n: points(v) for n, v in iid.items()}}
    if two_class:
        out[TWO_CLASS] = {n: points(v) for n, v in two_class.items()}
    return SmallBatchSummary(points=out, examples_seen=4096, chance=0.1)


def check(finding: Finding | None, verdict: str) -> None:
    assert finding is not None
    assert finding.verdict == verdict, finding.text
    assert_cites(finding)


BN = {2: (0.60, 0.61, 0.60), 64: (0.80, 0.81, 0.80)}  # loses 20 points at 2


@pytest.mark.parametrize(
    "renorm_at_2,verdict",
    [((0.75, 0.76, 0.75), AGREES),  # recovers 15 of 20
     ((0.62, 0.63, 0.62), DISAGREES),  # recovers 2
     ((0.70, 0.60, 0.80), INCONCLUSIVE)],  # recovers 10 +- 14
)  # fmt: skip
def test_renorm_micro_batch_verdicts(renorm_at_2: tuple[float, ...], verdict: str) -> None:
    finding = renorm_micro_finding(summary({"batch": BN, "renorm": {2: renorm_at_2}}))
    check(finding, verdict)
    assert "74.2 %" in finding.claim and "76.5 %" in finding.claim  # type: ignore[union-attr]


def test_nothing_to_recover_is_inconclusive() -> None:
    flat = {2: (0.80, 0.81, 0.80), 64: (0.80, 0.81, 0.80)}
    finding = renorm_micro_finding(summary({"batch": flat, "renorm": {2: (0.9, 0.9, 0.9)}}))
    check(finding, INCONCLUSIVE)
    assert "nothing to recover" in finding.text  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "renorm_two_class,verdict",
    [((0.70, 0.71, 0.70), AGREES), ((0.31, 0.30, 0.31), DISAGREES),
     ((0.50, 0.30, 0.60), INCONCLUSIVE)],
)  # fmt: skip
def test_renorm_non_iid_verdicts(renorm_two_class: tuple[float, ...], verdict: str) -> None:
    iid = {"batch": {32: (0.75, 0.76, 0.75)}, "renorm": {32: (0.74, 0.75, 0.74)}}
    skewed = {"batch": {32: (0.30, 0.31, 0.30)}, "renorm": {32: renorm_two_class}}
    check(renorm_non_iid_finding(summary(iid, skewed)), verdict)
    assert renorm_non_iid_finding(summary(iid)) is None


@pytest.mark.parametrize(
    "ws_at_2,verdict",
    [((0.805, 0.80, 0.81), AGREES), ((0.70, 0.71, 0.70), DISAGREES),
     ((0.785, 0.79, 0.78), INCONCLUSIVE)],  # 1.5 points under, spread 0.5: straddles 1
)  # fmt: skip
def test_group_norm_ws_verdicts(ws_at_2: tuple[float, ...], verdict: str) -> None:
    bn = {2: (0.60, 0.60, 0.60), 64: (0.80, 0.80, 0.80)}
    check(gn_ws_finding(summary({"batch": bn, "group-ws": {2: ws_at_2}})), verdict)


@pytest.mark.parametrize(
    "frn,verdict",
    [({2: (0.70, 0.70, 0.71), 64: (0.72, 0.72, 0.73)}, AGREES),  # loses 2, as group norm
     ({2: (0.50, 0.50, 0.51), 64: (0.72, 0.72, 0.73)}, DISAGREES),  # loses 22 > group's 2
     ({2: (0.55, 0.85, 0.60), 64: (0.72, 0.72, 0.73)}, INCONCLUSIVE),  # spread 16
     ({2: (0.70, 0.70, 0.71), 64: (0.12, 0.12, 0.13)}, INCONCLUSIVE)],  # gains 58: training
)  # fmt: skip
def test_frn_batch_independence_verdicts(frn: dict[int, tuple[float, ...]], verdict: str) -> None:
    group = {2: (0.68, 0.68, 0.69), 64: (0.70, 0.70, 0.71)}
    check(frn_finding(summary({"batch": BN, "group": group, "frn": frn})), verdict)
    assert frn_finding(summary({"batch": BN, "frn": frn})) is None  # no control


# ============================================================================== guide
@pytest.mark.parametrize(
    "bn_at_2,verdict,recommended",
    [((0.50, 0.51, 0.50), AGREES, "group norm + WS"),
     ((0.95, 0.96, 0.95), DISAGREES, "batch norm"),
     ((0.79, 0.80, 0.81), INCONCLUSIVE, "inconclusive")],
)  # fmt: skip
def test_micro_batch_row(bn_at_2: tuple[float, ...], verdict: str, recommended: str) -> None:
    rows = small_batch_guide(summary({
        "batch": {2: bn_at_2, 64: (0.8, 0.8, 0.8)},
        "group-ws": {2: (0.80, 0.81, 0.80), 64: (0.8, 0.8, 0.8)},
    }))  # fmt: skip
    (row,) = rows
    assert row.situation == MICRO_BATCHES and row.verdict == verdict
    assert row.recommendation.startswith(recommended)
    assert f"{100 * sum(bn_at_2) / 3:.1f}" in row.evidence and "80.3" in row.evidence
    assert "2 images" in row.evidence


def test_non_iid_row_and_its_omission() -> None:
    iid = {"batch": {32: (0.75, 0.75, 0.76), 64: (0.8, 0.8, 0.8)},
           "renorm": {32: (0.75, 0.75, 0.76), 64: (0.8, 0.8, 0.8)}}  # fmt: skip
    skewed = {"batch": {32: (0.30, 0.31, 0.30)}, "renorm": {32: (0.70, 0.71, 0.70)}}
    rows = small_batch_guide(summary(iid, skewed))
    assert [r.situation for r in rows] == [MICRO_BATCHES, NON_IID]
    assert rows[1].verdict == AGREES and rows[1].recommendation == "batch renorm"
    assert "two-class batches of 32" in rows[1].evidence
    assert [r.situation for r in small_batch_guide(summary(iid))] == [MICRO_BATCHES]


# ======================================================================= resume, command
def test_a_killed_run_resumes_without_redoing_a_cell(kill_and_resume) -> None:
    config = dataclasses.replace(TINY, norms=("group-ws",), seeds=1)
    data = synthetic_dataset(64, 32, seed=0)
    run = kill_and_resume("small-batch", config, data, after=2)
    assert len(run.resumed_cells) == 3  # two i.i.d. batch sizes, one two-class
    assert sorted(run.read_back) == sorted(run.before_kill)
    fresh = run_experiment(SMALL_BATCH, config, data, progress=False)
    assert run.resumed.summary == fresh.summary


def test_runs_as_its_own_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from normlab.cli.main import main

    argv = ["sweep", "small-batch", "--dataset", "synthetic", "--train-subset", "64",
            "--test-subset", "32", "--seeds", "1", "--norms", "batch,frn", "--batch-sizes",
            "4,16", "--non-iid-batch-sizes", "8", "--workers", "1", "--no-progress",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = Path(out.strip().splitlines()[-1])
    assert "Micro-batches and non-i.i.d. batches" in report.read_text(encoding="utf-8")
    assert len(list((report.parent / "cells").glob("*/*.json"))) == 2 * 3


def test_an_odd_two_class_batch_size_is_one_line_from_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from normlab.cli.main import main

    code = main(["sweep", "small-batch", "--non-iid-batch-sizes", "7", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("non_iid_batch_sizes: two-class batches hold two equal halves: "
                        "batch_size must be even, got 7") and "\n" not in err  # fmt: skip
