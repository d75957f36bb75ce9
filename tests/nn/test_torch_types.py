"""normlab's layers are recognised by type as torch.nn's are, and tools built on that work.

The oracle is torch.nn: ``torch.optim.swa_utils.update_bn`` on the torch.nn twin of a model
(float64), and torch.nn's own class hierarchy.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules import batchnorm as torch_batchnorm
from torch.nn.modules import instancenorm as torch_instancenorm
from torch.optim.swa_utils import update_bn

import normlab.nn as ours_nn
from normlab.models.lenet import LeNet
from normlab.testing.tolerance import assert_close_sum

TORCH_BASES = (
    torch_batchnorm._NormBase,
    torch_batchnorm._BatchNorm,
    torch_instancenorm._InstanceNorm,
)
LAYERS = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"]
LAYERS += ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


@pytest.mark.parametrize("name", LAYERS)
def test_isinstance_of_torch_bases_exactly_where_torch_twin_is(name: str) -> None:
    ours, theirs = getattr(ours_nn, name)(4), getattr(nn, name)(4)
    for base in TORCH_BASES:
        assert isinstance(ours, base) == isinstance(theirs, base), base.__name__


@pytest.mark.parametrize("name", LAYERS)
def test_state_dict_keys_and_every_method_are_normlabs(name: str) -> None:
    """torch's bases give the type only: each method they define is overridden by normlab."""
    ours, theirs = getattr(ours_nn, name)(4), getattr(nn, name)(4)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    torch_bases = [c for c in type(ours).__mro__ if c in TORCH_BASES]
    methods = {m for base in torch_bases for m, v in vars(base).items() if callable(v)}
    assert "forward" in methods and "_load_from_state_dict" in methods
    for method in methods:
        owner = next(c for c in type(ours).__mro__ if method in vars(c))
        assert owner.__module__.startswith("normlab."), (method, owner)


@pytest.mark.parametrize(
    ("name", "shape"), [("BatchNorm1d", (16, 3)), ("BatchNorm2d", (4, 3, 5, 5))]
)
def test_update_bn_recomputes_statistics_as_on_the_torch_twin(
    name: str, shape: tuple[int, ...]
) -> None:
    """Cumulative averages of per-batch means and unbiased variances over five batches."""
    batches = [3.0 + 2.0 * torch.randn(shape, dtype=torch.float64) for _ in range(5)]
    models = [nn.Sequential(getattr(lib, name)(3, dtype=torch.float64)) for lib in (ours_nn, nn)]
    for model in models:
        model[0].running_mean.fill_(-7.0)  # stale statistics that update_bn must replace
        update_bn(batches, model)
    ours, theirs = models[0][0], models[1][0]
    values = torch.stack(batches).movedim(2, 0).reshape(3, -1)  # (C, all values)
    terms = values.shape[1]
    assert_close_sum(
        ours.running_mean, theirs.running_mean, terms=terms, abs_sum=values.abs().mean(1)
    )
    per_batch = terms // len(batches)
    unbiased = per_batch / (per_batch - 1)
    # each centred square (x - mean)^2 is rounded relative to x^2, in the difference and
    # in the square: twice x^2 per term bounds it
    assert_close_sum(
        ours.running_var,
        theirs.running_var,
        terms=terms,
        abs_sum=2 * unbiased * values.square().mean(1),
    )
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 5
    assert ours.momentum == theirs.momentum == 0.1  # restored


def test_update_bn_no_longer_leaves_a_normlab_lenet_untouched() -> None:
    model = LeNet().double()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    update_bn([torch.randn(8, 1, 28, 28, dtype=torch.float64) for _ in range(3)], model)
    after = model.state_dict()
    assert len(before) == 8  # two buffers in each of the four batch norms
    for key, value in before.items():
        assert not torch.equal(after[key], value), key
