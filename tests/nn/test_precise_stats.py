"""Precise batch-norm statistics against torch.optim.swa_utils.update_bn (the oracle)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

import normlab.nn as ours_nn
from normlab.models.lenet import LeNet
from normlab.nn.precise_stats import RecomputedStats, recompute_batch_norm_stats
from normlab.testing.tolerance import assert_close_sum


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) as a DataLoader yields them, far from zero mean."""
    return [
        (2.0 + torch.randn(16, 1, 28, 28, dtype=torch.float64), torch.zeros(16))
        for _ in range(count)
    ]


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the running statistics and batch counts."""
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}


@pytest.mark.parametrize("norm", ["batch", "torch-batch"])
@pytest.mark.parametrize("num_batches", [None, 3])
def test_same_numbers_as_update_bn_on_the_same_batches(norm: str, num_batches: int | None) -> None:
    model = LeNet(norm=norm).double()
    batches = _batches(5)
    oracle = copy.deepcopy(model)
    update_bn(batches[: num_batches or len(batches)], oracle)
    result = recompute_batch_norm_stats(model, batches, num_batches)
    assert result == RecomputedStats(layers=4, batches=num_batches or 5)
    # the same layers run the same operations on the same inputs: equal to the last bit
    ours, theirs = _buffers(model), _buffers(oracle)
    assert ours.keys() == theirs.keys() and len(ours) == 12
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_normlab_model_equals_update_bn_on_its_torch_twin() -> None:
    """First layer (its input is the batch itself): normlab's statistics against torch's."""
    model = nn.Sequential(ours_nn.BatchNorm2d(1, dtype=torch.float64))
    twin = nn.Sequential(nn.BatchNorm2d(1, dtype=torch.float64))
    batches = _batches(4)
    recompute_batch_norm_stats(model, batches)
    update_bn(batches, twin)
    values = torch.cat([images for images, _ in batches]).flatten()
    assert_close_sum(
        model[0].running_mean,
        twin[0].running_mean,
        terms=values.numel(),
        abs_sum=values.abs().mean(),
    )
    per_batch = values.numel() // 4
    assert_close_sum(
        model[0].running_var,
        twin[0].running_var,
        terms=values.numel(),
        abs_sum=2 * values.square().mean() * per_batch / (per_batch - 1),
    )


def test_modes_and_momenta_are_restored_and_other_layers_untouched() -> None:
    model = LeNet(norm="batch").double().eval()
    model.layers[1].momentum = 0.3
    extra = ours_nn.BatchNorm1d(10, track_running_stats=False, dtype=torch.float64)
    model.add_module("head_norm", extra.eval())  # not called by forward, no statistics
    recompute_batch_norm_stats(model, _batches(2))
    assert not any(m.training for m in model.modules())
    assert model.layers[1].momentum == 0.3 and model.layers[5].momentum == 0.1


def test_statistics_differ_from_the_moving_average_they_replace() -> None:
    model = LeNet(norm="batch").double()
    with torch.no_grad():
        for images, _ in _batches(3):
            model(images * 3.0)  # a moving average of other data
    before = _buffers(model)
    recompute_batch_norm_stats(model, _batches(2))
    after = _buffers(model)
    assert all(not torch.equal(before[k], after[k]) for k in before if "running" in k)
    assert all(after[k].item() == 2 for k in after if "tracked" in k)


def test_bad_arguments_are_refused_before_anything_changes() -> None:
    model = LeNet(norm="batch").double()
    with torch.no_grad():
        model(_batches(1)[0][0])  # statistics other than the initial ones
    before = _buffers(model)
    with pytest.raises(ValueError, match="yielded no batch"):
        recompute_batch_norm_stats(model, [])
    with pytest.raises(ValueError, match="num_batches must be a positive integer"):
        recompute_batch_norm_stats(model, _batches(1), num_batches=0)
    with pytest.raises(TypeError, match="each batch must be a tensor"):
        recompute_batch_norm_stats(model, [["not a tensor"]])
    after = _buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_model_without_batch_norm_runs_nothing() -> None:
    model = LeNet(norm="group")
    assert recompute_batch_norm_stats(model, iter(())) == RecomputedStats(layers=0, batches=0)
