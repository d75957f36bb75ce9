"""Running statistics and momentum: closed forms, the lag measurement, its invariants."""

from __future__ import annotations

import math

import pytest
import torch

from normlab.data import synthetic_dataset
from normlab.errors import UsageError
from normlab.lab.common import accuracy_with_batch_stats
from normlab.lab.experiments.momentum import (
    MOMENTUM,
    MomentumConfig,
    closed_at,
    eval_steps,
    remaining_init_weight,
    set_norm_momentum,
    steps_to_forget,
)
from normlab.lab.study import run_experiment
from normlab.models.lenet import LeNet

DATA = synthetic_dataset(64, 32, seed=0)


def test_closed_forms() -> None:
    assert remaining_init_weight(0.1, 2) == pytest.approx(0.81)
    assert steps_to_forget(0.1) == pytest.approx(math.log(0.05) / math.log(0.9))  # 28.43
    assert steps_to_forget(0.01) == pytest.approx(298.07, abs=0.01)
    assert steps_to_forget(1.0) == 0.0
    # after t_95 steps the initial value weighs exactly 5 %
    assert remaining_init_weight(0.3, steps_to_forget(0.3)) == pytest.approx(0.05)


def test_set_norm_momentum_changes_what_the_running_mean_follows() -> None:
    model = LeNet(norm="batch")
    assert set_norm_momentum(model, 0.5) == 4
    x = torch.randn(8, 1, 28, 28)
    model(x)
    first = model.layers[1]
    conv = model.layers[0](x)
    expected = 0.5 * conv.mean(dim=(0, 2, 3))  # (1 - m) * 0 + m * batch mean
    assert torch.allclose(first.running_mean, expected, atol=1e-6)
    assert set_norm_momentum(LeNet(norm="group"), 0.5) == 0


def test_accuracy_with_batch_stats_keeps_the_model_and_differs_from_eval_mode() -> None:
    torch.manual_seed(0)
    model = LeNet(norm="batch").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc = accuracy_with_batch_stats(model, DATA.test_images, DATA.test_labels, 8)
    assert 0 <= acc <= 1 and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(UsageError, match="at least 2"):
        accuracy_with_batch_stats(model, DATA.test_images, DATA.test_labels, 1)


def test_eval_steps_and_closed_at() -> None:
    assert eval_steps(64, 4) == [0, 1, 8, 64]  # 0, then 64 ** (0, 1/2, 1)
    assert eval_steps(3, 9) == [0, 1, 2, 3]
    assert closed_at([0, 1, 8, 64], [0.5, 0.3, 0.005, 0.2], 0.01) == 8  # the first time
    assert closed_at([0, 1, 8], [0.5, -0.005, 0.0], 0.01) == 1  # either sign
    assert closed_at([0, 1], [0.5, 0.3], 0.01) is None


def test_momentum_experiment_invariants() -> None:
    config = MomentumConfig(
        dataset="synthetic", train_subset=64, test_subset=32, momenta=(0.1, 1.0), seeds=2,
        evaluations=3, batch_size=16,
    )  # fmt: skip
    summary = run_experiment(MOMENTUM, config, DATA, progress=False).summary
    first, second = summary.momenta
    assert [m.momentum for m in summary.momenta] == [0.1, 1.0]
    for item in summary.momenta:
        assert item.steps == [0, 1, 4]  # 0, then 4 ** (0, 1)
        for seed in range(2):  # gap = batch-stats accuracy - eval-mode accuracy, per point
            gaps = item.gap.values[seed]
            evals = item.eval_accuracy.values[seed]
            batch = item.batch_stats_accuracy.values[seed]
            assert gaps == pytest.approx([b - e for b, e in zip(batch, evals, strict=True)])
        assert item.steps_to_forget == pytest.approx(steps_to_forget(item.momentum))
        assert len(item.gap.std) == 3
    # step 0: both momenta start from the same weights and the same initial statistics
    assert first.eval_accuracy.values[0][0] == second.eval_accuracy.values[0][0]
    # batch statistics do not depend on the running averages' momentum
    assert first.batch_stats_accuracy.values == second.batch_stats_accuracy.values


def test_momentum_config_errors() -> None:
    with pytest.raises(UsageError, match=r"momentum must be in \(0, 1\]"):
        MomentumConfig(momenta=(0.0,)).validate()
    with pytest.raises(UsageError, match="keeps no running statistics"):
        MomentumConfig(norm="group").validate()
