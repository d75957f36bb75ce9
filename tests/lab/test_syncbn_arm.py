"""The SyncBN arm of the batch-size sweep: a real 2-process run against one process fed the
concatenation of both ranks' batches, and the combinations that cannot train."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from normlab.data import batches, synthetic_dataset
from normlab.lab.common import accuracy_with_batch_stats, train_config
from normlab.lab.experiments import sweep_batch_size
from normlab.lab.experiments.sweep_batch_size import BatchSizeSweepConfig
from normlab.lab.syncbn_arm import register_syncbn_arms, run_syncbn_arm
from normlab.train import engine

SWEEP = BatchSizeSweepConfig(
    batch_sizes=(16,),
    arms=("batch",),
    seeds=1,
    dataset="synthetic",
    train_subset=256,
    test_subset=64,
    lr=0.1,
    activation="relu",
)


def _one_process(config: BatchSizeSweepConfig, data: Any, batch_size: int) -> dict[str, float]:
    """One process, batch norm over the global batch: rank 0's half then rank 1's."""
    train = train_config(config, norm="batch", batch_size=batch_size,
                         lr=config.lr_for(batch_size), seed=0)  # fmt: skip
    model = engine.build_model(train)
    optimizer = engine.make_optimizer(model, train)
    half = batch_size // 2
    shards = [batches(data.train_images, data.train_labels, half, shuffle=True, seed=0,
                      epoch=0, rank=r, world_size=2) for r in range(2)]  # fmt: skip
    for (x0, y0), (x1, y1) in zip(*shards, strict=True):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(torch.cat([x0, x1])), torch.cat([y0, y1]))
        loss.backward()
        optimizer.step()
    test_loss, test_accuracy = engine.evaluate(model, data.test_images, data.test_labels)
    return {
        "last_loss": float(loss.detach()),
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "batch_stats_accuracy": accuracy_with_batch_stats(
            model, data.test_images, data.test_labels, batch_size
        ),
    }


def test_syncbn_arm_on_two_processes_equals_one_process_on_the_global_batch() -> None:
    data = synthetic_dataset(num_train=256, num_test=64, seed=0)
    record = run_syncbn_arm(SWEEP, data, 16, 0, sync=True)
    expected = _one_process(SWEEP, data, 16)
    assert (record["processes"], record["per_process_batch"], record["sync"]) == (2, 8, True)
    assert record["steps"] == 256 // 16 and not record["diverged"]
    assert record["last_loss"] == pytest.approx(expected["last_loss"], abs=1e-4)
    assert record["final"]["test_loss"] == pytest.approx(expected["test_loss"], abs=1e-4)
    assert record["final"]["test_accuracy"] == pytest.approx(expected["test_accuracy"], abs=1 / 64)
    assert record["batch_stats_accuracy"] == pytest.approx(
        expected["batch_stats_accuracy"], abs=1 / 64
    )


def test_combinations_that_cannot_train_are_reported_not_run() -> None:
    data = synthetic_dataset(num_train=32, num_test=8, seed=0)
    odd = run_syncbn_arm(SWEEP, data, 3, 0, sync=True)
    assert odd["final"] is None and "does not split over 2 processes" in odd["unsupported"]
    single = run_syncbn_arm(SWEEP, data, 2, 0, sync=False)
    assert single["final"] is None and "batch norm needs 2 without sync" in single["unsupported"]
    assert single["steps"] == 0 and single["batch_stats_accuracy"] is None


def test_register_adds_both_arms_to_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_batch_size, "BATCH_SIZE_ARMS", {})  # leave the real registry alone
    assert register_syncbn_arms() == ["syncbn", "localbn"]
    assert set(sweep_batch_size.BATCH_SIZE_ARMS) == {"syncbn", "localbn"}
    replace(SWEEP, arms=("batch", "syncbn", "localbn")).validate()
