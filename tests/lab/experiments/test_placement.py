"""Placement before/after the activation: the model really changes, the summary is complete."""

from __future__ import annotations

import pytest
from torch import nn

from normlab.data import synthetic_dataset
from normlab.errors import UsageError
from normlab.lab.experiments.placement import PLACEMENT, PlacementConfig
from normlab.lab.study import run_experiment
from normlab.train.config import TrainConfig
from normlab.train.engine import build_model


def test_after_puts_the_norm_behind_the_activation() -> None:
    before = build_model(TrainConfig(placement="before", activation="relu")).layers
    after = build_model(TrainConfig(placement="after", activation="relu")).layers
    assert "BatchNorm" in type(before[1]).__name__ and isinstance(before[2], nn.ReLU)
    assert isinstance(after[1], nn.ReLU) and "BatchNorm" in type(after[2]).__name__


def test_placement_summary() -> None:
    config = PlacementConfig(
        dataset="synthetic", train_subset=64, test_subset=32, epochs=1, batch_size=16, seeds=2
    )
    assert [c.key for c in PLACEMENT.cells(config)][:3] == [
        "placement/activation=sigmoid,placement=before/seed=0",
        "placement/activation=sigmoid,placement=before/seed=1",
        "placement/activation=sigmoid,placement=after/seed=0",
    ]
    result = run_experiment(PLACEMENT, config, synthetic_dataset(64, 32, seed=0), progress=False)
    rows = result.summary.rows
    assert [(r.activation, r.placement) for r in rows] == [
        ("sigmoid", "before"),
        ("sigmoid", "after"),
        ("relu", "before"),
        ("relu", "after"),
    ]
    for row in rows:
        assert row.test_accuracy.n == 2 and row.seeds == 2
        assert row.test_loss.values[0] != row.test_loss.values[1]  # seeds differ
    # the same seed, another placement: another network, other numbers
    assert rows[2].test_loss.values != rows[3].test_loss.values


def test_placement_config_errors() -> None:
    with pytest.raises(UsageError, match="not 'none'"):
        PlacementConfig(norm="none").validate()
    with pytest.raises(UsageError, match="unknown placement 'middle'"):
        PlacementConfig(placements=("middle",)).validate()
