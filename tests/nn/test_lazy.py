"""normlab's lazy norms against torch.nn's Lazy* (the oracle), in float64."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import normlab.nn as ours_nn
from normlab.nn import lazy
from normlab.testing.tolerance import assert_close_sum

CASES = [
    ("LazyBatchNorm1d", "BatchNorm1d", (8, 3)),
    ("LazyBatchNorm1d", "BatchNorm1d", (4, 3, 5)),
    ("LazyBatchNorm2d", "BatchNorm2d", (4, 3, 5, 2)),
    ("LazyBatchNorm3d", "BatchNorm3d", (2, 3, 2, 3, 2)),
    ("LazyInstanceNorm1d", "InstanceNorm1d", (4, 3, 5)),
    ("LazyInstanceNorm2d", "InstanceNorm2d", (4, 3, 5, 2)),
    ("LazyInstanceNorm3d", "InstanceNorm3d", (2, 3, 2, 3, 2)),
]
NAMES = sorted({case[0] for case in CASES})


def _parameters(cls: type) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()]


@pytest.mark.parametrize("name", NAMES)
def test_constructor_repr_and_state_dict_keys_equal_torch(name: str) -> None:
    assert _parameters(getattr(lazy, name)) == _parameters(getattr(nn, name))
    for kwargs in ({}, {"affine": False}, {"track_running_stats": False}, {"bias": False}):
        ours, theirs = getattr(lazy, name)(**kwargs), getattr(nn, name)(**kwargs)
        assert repr(ours) == repr(theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        assert ours.has_uninitialized_params() == theirs.has_uninitialized_params()


@pytest.mark.parametrize(("name", "becomes", "shape"), CASES)
@pytest.mark.parametrize("training", [True, False])
def test_first_call_fixes_num_features_and_computes_like_torch(
    name: str, becomes: str, shape: tuple[int, ...], training: bool
) -> None:
    ours = getattr(lazy, name)(dtype=torch.float64).train(training)
    theirs = getattr(nn, name)(dtype=torch.float64).train(training)
    x = 5.0 + 3.0 * torch.randn(shape, dtype=torch.float64)
    y_ours, y_theirs = ours(x), theirs(x)
    assert type(ours) is getattr(ours_nn, becomes)  # normlab's layer, not torch's
    assert ours.num_features == theirs.num_features == shape[1]
    per_channel = x.numel() // shape[1] if "Batch" in name else x[0, 0].numel()
    # standardised values: (x - mean) / std, whose rounding scales with |x| / std
    assert_close_sum(y_ours, y_theirs, terms=per_channel, abs_sum=x.abs().max() / x.std())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        mine = ours.state_dict()[key]
        assert mine.shape == value.shape and mine.dtype == value.dtype, key
    if theirs.running_mean is not None:
        assert_close_sum(
            ours.running_mean, theirs.running_mean, terms=per_channel, abs_sum=x.abs().max()
        )


def test_lazy_state_dict_loads_from_torch_and_then_runs_as_normlab() -> None:
    source = nn.BatchNorm2d(4, dtype=torch.float64)
    with torch.no_grad():
        source.running_mean.uniform_(-1, 1)
        source.weight.uniform_(0.5, 2)
    ours = lazy.LazyBatchNorm2d(dtype=torch.float64)
    ours.load_state_dict(source.state_dict())
    assert not ours.has_uninitialized_params()
    ours.eval()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    y = ours(x)
    assert type(ours) is ours_nn.BatchNorm2d
    assert_close_sum(y, source.eval()(x), terms=1, abs_sum=x.abs().max() * 4)


def test_recognised_as_torch_lazy_modules_and_norm_bases() -> None:
    from torch.nn.modules import batchnorm as torch_batchnorm
    from torch.nn.modules.lazy import LazyModuleMixin

    for name in NAMES:
        ours, theirs = getattr(lazy, name)(), getattr(nn, name)()
        for base in (LazyModuleMixin, torch_batchnorm._BatchNorm, torch_batchnorm._NormBase):
            assert isinstance(ours, base) == isinstance(theirs, base)


def test_unbatched_instance_input_behaves_as_torch() -> None:
    """torch reads C from dimension 1 even for an unbatched input, then refuses it."""
    for lib in (lazy, nn):
        with pytest.raises(ValueError, match="to match num_features"):
            lib.LazyInstanceNorm1d()(torch.randn(3, 5))
