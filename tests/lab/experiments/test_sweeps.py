"""The learning-rate and batch-size sweeps on tiny synthetic data."""

from __future__ import annotations

import math

import pytest

from normlab.data import synthetic_dataset
from normlab.errors import UsageError
from normlab.lab.cells import Cell
from normlab.lab.experiments import sweep_batch_size
from normlab.lab.experiments.sweep_batch_size import (
    BATCH_SIZE_SWEEP,
    BatchSizeSweepConfig,
    register_batch_size_arm,
)
from normlab.lab.experiments.sweep_lr import LR_SWEEP, LrSweepConfig, log_grid
from normlab.lab.study import run_experiment

DATA = synthetic_dataset(64, 32, seed=0)
TINY = dict(dataset="synthetic", train_subset=64, test_subset=32, epochs=1)


def test_log_grid_is_geometric() -> None:
    # closed form: low * (high / low) ** (i / (points - 1)), 2 significant digits
    expected = tuple(float(f"{0.01 * 300 ** (i / 5):.2g}") for i in range(6))
    assert log_grid(0.01, 3.0, 6) == expected == (0.01, 0.031, 0.098, 0.31, 0.96, 3.0)
    grid = log_grid(0.1, 10.0, 3)
    assert grid == (0.1, 1.0, 10.0)
    with pytest.raises(UsageError, match="0 < low < high"):
        log_grid(1.0, 0.5, 3)


def test_lr_sweep_diverged_flags_are_consistent_with_the_losses() -> None:
    # lr 1e30 blows batch-norm LeNet's weights up in one step: the loss becomes NaN.
    config = LrSweepConfig(**TINY, lrs=(0.1, 1e30), norms=("batch", "none"), batch_size=16)
    config.validate()
    records = {}
    for norm, lr in (("batch", 0.1), ("batch", 1e30), ("none", 0.1)):
        cell = Cell("sweep-lr", (("norm", norm), ("lr", lr)), 0)
        records[(norm, lr)] = LR_SWEEP.run_cell(config, DATA, cell)
    assert records[("batch", 1e30)]["diverged"]  # the case the test is about exists
    assert not records[("batch", 0.1)]["diverged"]
    for record in records.values():
        if record["diverged"]:
            assert record["final"] is None and not record["learned"]
            assert record["diverged_at_step"] is not None
            assert record["steps"] == record["diverged_at_step"] + 1
            assert not math.isfinite(record["last_loss"])
        else:
            assert record["final"] is not None and record["diverged_at_step"] is None
            assert all(math.isfinite(e["train_loss"]) for e in record["epochs"])
            assert math.isfinite(record["last_loss"])
            chance = record["chance"]
            assert record["learned"] == (record["final"]["test_accuracy"] > chance + 0.05)


def test_lr_sweep_summary_counts() -> None:
    config = LrSweepConfig(**TINY, lrs=(0.1, 1e30), norms=("batch",), seeds=2, batch_size=16)
    result = run_experiment(LR_SWEEP, config, DATA, progress=False).summary
    points = result.norms["batch"]
    assert [p.lr for p in points] == [0.1, 1e30]
    assert points[1].diverged == 2 and points[1].test_accuracy.mean is None
    assert points[0].diverged == 0 and points[0].test_accuracy.n == 2
    assert result.chance == pytest.approx(0.1)


def test_batch_size_sweep_fixed_examples_scaled_lr_and_eval_modes() -> None:
    config = BatchSizeSweepConfig(
        **TINY, batch_sizes=(4, 16), arms=("batch", "group"), seeds=2, lr=0.1, base_batch_size=32
    )
    result = run_experiment(BATCH_SIZE_SWEEP, config, DATA, progress=False).summary
    assert result.examples_seen == 64
    for arm, points in result.arms.items():
        assert [p.batch_size for p in points] == [4, 16]
        assert [p.steps for p in points] == [[16, 16], [4, 4]]  # same examples, more steps
        assert [p.lr for p in points] == pytest.approx([0.1 * 4 / 32, 0.1 * 16 / 32])
        for p in points:
            assert p.eval_accuracy.n == 2 and p.batch_stats_accuracy.n == 2
            if arm == "group":  # no running statistics: both modes are the same network
                assert p.eval_accuracy.values == p.batch_stats_accuracy.values


def test_registered_arm_runs_in_the_sweep() -> None:
    calls = []

    def reference_arm(config, data, batch_size, seed):  # torch.nn's BN as a stand-in arm
        calls.append((batch_size, seed))
        return sweep_batch_size._train_norm_arm(config, data, "torch-batch", batch_size, seed)

    register_batch_size_arm("reference", reference_arm)
    try:
        config = BatchSizeSweepConfig(**TINY, batch_sizes=(8,), arms=("reference",), seeds=1)
        config.validate()
        record = BATCH_SIZE_SWEEP.run_cell(
            config, DATA, Cell("sweep-batch-size", (("arm", "reference"), ("batch_size", 8)), 0)
        )
        plain = BATCH_SIZE_SWEEP.run_cell(
            config, DATA, Cell("sweep-batch-size", (("arm", "torch-batch"), ("batch_size", 8)), 0)
        )
        assert calls == [(8, 0)]
        assert record["final"]["test_loss"] == plain["final"]["test_loss"]
        with pytest.raises(UsageError, match="must be new"):
            register_batch_size_arm("batch", reference_arm)
    finally:
        sweep_batch_size.BATCH_SIZE_ARMS.pop("reference", None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_sizes": (1, 4)}, "every batch size must be an integer >= 2"),
        ({"arms": ("batch", "nope")}, "unknown arm 'nope'"),
        ({"lr_scaling": "sqrt"}, "unknown lr_scaling 'sqrt'"),
        ({"train_subset": 65, "batch_sizes": (4,)}, "last batch of 1 example"),
    ],
)
def test_batch_size_config_errors(changes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        BatchSizeSweepConfig(**changes).validate()


def test_lr_config_errors() -> None:
    with pytest.raises(UsageError, match="lrs must be positive numbers"):
        LrSweepConfig(lrs=(0.1, -1.0)).validate()
    with pytest.raises(UsageError, match="lrs has repeats"):
        LrSweepConfig(lrs=(0.1, 0.1)).validate()
