"""The study: interrupted and resumed without redoing a finished cell; one report that
embeds every figure; findings that cite the summaries' numbers; workers change nothing."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
from pathlib import Path

import pytest

from normlab.data import synthetic_dataset
from normlab.errors import UsageError
from normlab.lab.experiments.compare import CompareConfig
from normlab.lab.experiments.depth import DepthConfig
from normlab.lab.experiments.momentum import MomentumConfig
from normlab.lab.experiments.placement import PlacementConfig
from normlab.lab.experiments.probes import ProbeConfig
from normlab.lab.experiments.small_batch import SmallBatchConfig
from normlab.lab.experiments.sweep_batch_size import BatchSizeSweepConfig
from normlab.lab.experiments.sweep_lr import LrSweepConfig
from normlab.lab.experiments.train_eval import TrainEvalConfig
from normlab.lab.experiments.transformer import TransformerConfig
from normlab.lab.plan import EXPERIMENTS, names
from normlab.lab.study import (
    default_plan,
    load_results,
    plan_from_dict,
    plan_to_dict,
    run_plan_cells,
    run_study,
)

DATA = synthetic_dataset(64, 32, seed=0)
TINY = dict(dataset="synthetic", train_subset=64, test_subset=32, epochs=1)


def tiny_plan() -> dict:
    return {
        "compare": CompareConfig(**TINY, norms=("batch", "none"), seeds=2, batch_size=16),
        "sweep-lr": LrSweepConfig(**TINY, lrs=(0.1,), seeds=1, batch_size=16),
        "sweep-batch-size": BatchSizeSweepConfig(
            **TINY, batch_sizes=(8, 16), arms=("batch",), seeds=1
        ),
        "probe": ProbeConfig(**TINY, seeds=1, probes=2, probe_batch=16, batch_size=16),
        "placement": PlacementConfig(**TINY, activations=("relu",), seeds=1, batch_size=16),
        "momentum": MomentumConfig(**TINY, momenta=(0.1,), seeds=1, evaluations=2, batch_size=16),
        "transformer": TransformerConfig(
            **TINY, norms=("layer",), warmup_norms=(), causal_norms=("layer",), seeds=1,
            width=8, depth=1, heads=2, batch_size=16, causal_batch_size=4, gradient_batches=1,
        ),
        "depth": DepthConfig(
            **TINY, arms=("plain-batch",), depths=(4,), seeds=1, signal_batch=16, batch_size=16
        ),
        "train-eval": TrainEvalConfig(
            **TINY, momenta=(0.1,), seeds=1, precise_batches=2, finetune_subset=8,
            timing_repeats=1, batch_size=16, inference_batch_size=16,
        ),
        "small-batch": SmallBatchConfig(
            **TINY, norms=("batch",), batch_sizes=(16,), non_iid_batch_sizes=(), seeds=1
        ),
    }


TOTAL_CELLS = 4 + 2 + 2 + 4 + 2 + 1 + 4 + 1 + 2 + 1  # probe: 2 activations x 2 norms;
# transformer: classification, gradients at initialisation pre- and post-LN, next row


class Stop(Exception):
    """Stands for Ctrl-C or a killed process in the middle of the study."""


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("study")
    first: list[str] = []

    def stop_after_five(cell, result, computed) -> None:
        first.append(cell.key)
        if len(first) == 5:
            raise Stop

    with pytest.raises(Stop):
        run_study(tiny_plan(), out=out, data=DATA, progress=False, on_cell=stop_after_five)
    (run_dir,) = out.iterdir()
    saved = sorted(p.name for p in (run_dir / "cells").glob("*/*.json"))
    second: list[tuple[str, bool]] = []
    result = run_study(
        resume=run_dir,
        data=DATA,
        progress=False,
        on_cell=lambda cell, r, computed: second.append((cell.key, computed)),
    )
    return {"first": first, "saved": saved, "second": second, "result": result}


def test_resume_redoes_nothing_finished(resumed: dict) -> None:
    assert len(resumed["saved"]) == 5  # every finished cell was saved before the stop
    second = resumed["second"]
    assert len(second) == TOTAL_CELLS
    loaded = [key for key, computed in second if not computed]
    computed = [key for key, computed in second if computed]
    assert sorted(loaded) == sorted(resumed["first"])  # the five finished cells, loaded
    assert len(computed) == TOTAL_CELLS - 5 and not set(computed) & set(loaded)
    result = resumed["result"]
    assert (result.cells_computed, result.cells_loaded) == (TOTAL_CELLS - 5, 5)
    assert len(list((result.run_dir / "cells").glob("*/*.json"))) == TOTAL_CELLS


def test_report_embeds_every_figure(resumed: dict) -> None:
    result = resumed["result"]
    figures = sorted((result.run_dir / "figures").glob("*.png"))
    assert sorted(f.stem for f in figures) == sorted(
        ["compare", "sweep-lr", "sweep-batch-size", "probe-smoothness", "probe-layers-sigmoid",
         "probe-layers-relu", "placement", "momentum", "transformer-accuracy",
         "transformer-gradients", "transformer-causal", "depth", "depth-signal",
         "train-eval-statistics", "train-eval-finetune-fusion", "small-batch"]
    )  # fmt: skip
    html = result.report_html.read_text(encoding="utf-8")
    embedded = [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([^\"')]+)", html)]
    assert sorted(embedded) == sorted(f.read_bytes() for f in figures)
    assert 'src="figures' not in html and "http" not in html.split("<body")[1][:200]
    markdown = result.report_md.read_text(encoding="utf-8")
    for figure in figures:
        assert f"figures/{figure.name}" in markdown
    for experiment in EXPERIMENTS:
        assert experiment.title in html


def test_findings_cite_the_numbers_of_the_summaries(resumed: dict) -> None:
    result = resumed["result"]
    stored = json.loads((result.run_dir / "results.json").read_text(encoding="utf-8"))
    assert len(stored["findings"]) == len(result.findings) > 0
    for finding in result.findings:
        printed = [float(n) for n in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", finding.text)]
        for value in finding.numbers.values():
            assert any(math.isclose(value, p, abs_tol=1e-9) for p in printed), finding.text
    compare = result.summaries["compare"].summary.norms
    best = next(f for f in result.findings if "best_accuracy" in f.numbers)
    top = max(s.final_test_accuracy.mean for s in compare.values())
    assert best.numbers["best_accuracy"] == round(100 * top, 1)


def test_results_json_reads_back_as_the_typed_results(resumed: dict) -> None:
    result = resumed["result"]
    assert load_results(result.run_dir) == result.summaries  # configs, summaries, cells


def test_workers_give_the_same_numbers() -> None:
    plan = {"compare": CompareConfig(**TINY, norms=("batch", "group"), seeds=1, batch_size=16)}
    serial = run_plan_cells(plan, data=DATA, progress=False, workers=1)["compare"]
    parallel = run_plan_cells(plan, data=DATA, progress=False, workers=2)["compare"]
    for norm in ("batch", "group"):
        ours, theirs = serial.summary.norms[norm], parallel.summary.norms[norm]
        # every number but the measured seconds
        assert dataclasses.replace(ours, seconds_per_epoch=theirs.seconds_per_epoch) == theirs


def test_plans_roundtrip_and_budgets() -> None:
    for quick in (False, True):
        plan = default_plan(quick=quick)
        assert list(plan) == list(names())
        assert plan_from_dict(json.loads(json.dumps(plan_to_dict(plan)))) == plan
    assert all(c.seeds == 5 for c in default_plan(seeds=5).values())
    assert list(default_plan(experiments=("probe", "compare"))) == ["compare", "probe"]
    with pytest.raises(UsageError, match="unknown experiment 'nope'"):
        default_plan(experiments=("nope",))


def test_resume_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a directory"):
        run_study(resume=tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"kind": "train", "config": {}}))
    with pytest.raises(UsageError, match="not a normlab study run"):
        run_study(resume=tmp_path)
    with pytest.raises(UsageError, match="runs its own plan"):
        run_study(tiny_plan(), resume=tmp_path)
