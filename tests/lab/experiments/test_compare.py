"""The norm comparison on tiny synthetic data: structure, seeds, torch reference."""

from __future__ import annotations

import math

import pytest

from normlab.data import synthetic_dataset
from normlab.errors import UsageError
from normlab.lab.experiment import ExperimentResult
from normlab.lab.experiments.compare import COMPARE, CompareConfig
from normlab.lab.study import run_experiment

TINY = dict(dataset="synthetic", train_subset=64, test_subset=32, epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def result() -> ExperimentResult:
    config = CompareConfig(**TINY, norms=("batch", "torch-batch", "none"), seeds=2)
    return run_experiment(COMPARE, config, synthetic_dataset(64, 32, seed=0), progress=False)


def test_every_norm_has_every_seed_and_epoch(result: ExperimentResult) -> None:
    summary = result.summary
    assert list(summary.norms) == ["batch", "torch-batch", "none"]
    assert result.config.norms == ("batch", "torch-batch", "none")
    assert summary.steps_per_epoch == 4  # 64 examples / 16
    for runs in summary.norms.values():
        final = runs.final_test_accuracy
        assert final.n == 2 and len(final.values) == 2
        assert final.std is not None and final.std >= 0  # an error bar
        assert math.isclose(final.mean, sum(final.values) / 2)
        per_epoch = runs.per_epoch.test_accuracy
        assert len(per_epoch.mean) == len(per_epoch.std) == 2  # epochs
        assert per_epoch.values[0][-1] == final.values[0]  # last epoch is the final
        assert runs.seconds_per_epoch.n == 4  # 2 seeds x 2 epochs
        assert runs.seconds_per_epoch.mean > 0
        assert len(runs.loss_curves) == 2 and runs.loss_curves[0]


def test_seeds_differ(result: ExperimentResult) -> None:
    for runs in result.summary.norms.values():
        losses = runs.final_test_loss.values
        assert losses[0] != losses[1]  # different initialisation and batch order


def test_normlab_batch_norm_tracks_torch_reference(result: ExperimentResult) -> None:
    ours = result.summary.norms["batch"].final_test_loss.values
    ref = result.summary.norms["torch-batch"].final_test_loss.values
    for a, b in zip(ours, ref, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)  # torch.nn is the oracle


def test_cells_and_bad_config() -> None:
    cells = COMPARE.cells(CompareConfig(**TINY, norms=("batch", "none"), seeds=3))
    assert [c.key for c in cells][:2] == ["compare/norm=batch/seed=0", "compare/norm=batch/seed=1"]
    assert len(cells) == 6 and all(c.cost > 0 for c in cells)
    with pytest.raises(UsageError, match="unknown norm 'nope'"):
        CompareConfig(norms=("nope",)).validate()
    with pytest.raises(UsageError, match="norms has repeats"):
        CompareConfig(norms=("batch", "batch")).validate()
    with pytest.raises(UsageError, match="seeds must be a positive integer"):
        CompareConfig(seeds=0).validate()
