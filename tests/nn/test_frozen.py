"""FrozenBatchNorm2d and freeze_batch_norm against torch.nn.BatchNorm2d in evaluation mode."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import normlab.nn
from normlab.functional.frozen import frozen_batch_norm
from normlab.nn.frozen import FrozenBatchNorm2d, freeze_batch_norm
from normlab.testing.tolerance import assert_close_sum, unit_roundoff

# Inductor's C++ code does not build under ATEN_CPU_CAPABILITY=default (it emits vector code
# without the vector headers): there, the graph is traced and run by AOT autograd alone.
COMPILE_BACKEND = "aot_eager" if os.environ.get("ATEN_CPU_CAPABILITY") == "default" else "inductor"


def _trained_bn(c: int, dtype: torch.dtype = torch.float64, offset: float = 0.0) -> nn.BatchNorm2d:
    """A torch BatchNorm2d in eval mode with statistics and affine off 0 and 1."""
    bn = nn.BatchNorm2d(c, dtype=dtype)
    with torch.no_grad():
        bn.weight.copy_(1 + 0.5 * torch.randn(c))
        bn.bias.copy_(0.5 * torch.randn(c))
        bn.running_mean.copy_(offset + torch.randn(c))
        bn.running_var.copy_(0.5 + torch.rand(c))
    return bn.eval()


@pytest.mark.parametrize("training", [True, False])
def test_equals_torch_eval_batch_norm_in_float64(training: bool) -> None:
    bn = _trained_bn(5)
    frozen = FrozenBatchNorm2d(5, dtype=torch.float64)
    frozen.load_state_dict(bn.state_dict())
    frozen.train(training)
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = frozen(x), bn(x_ref)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    y_ref.backward(upstream)
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).abs().view(-1, 1, 1)
    # each output: a subtraction, a product and a sum, each rounded once, in either
    assert_close_sum(
        y,
        y_ref,
        terms=3,
        abs_sum=(x - bn.running_mean.view(-1, 1, 1)).abs() * scale + bn.bias.abs().view(-1, 1, 1),
    )
    assert_close_sum(x.grad, x_ref.grad, terms=2, abs_sum=upstream.abs() * scale)
    assert frozen.training is training and list(frozen.parameters()) == []


def test_state_dict_keys_are_torchvisions_and_a_batch_norm_loads() -> None:
    frozen = FrozenBatchNorm2d(4)
    assert list(frozen.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert dict(frozen.named_parameters()) == {}
    bn = _trained_bn(4, torch.float32)
    assert "num_batches_tracked" in bn.state_dict()
    result = frozen.load_state_dict(bn.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(frozen.state_dict()[key], bn.state_dict()[key])
    assert repr(frozen) == "FrozenBatchNorm2d(4, eps=1e-05)"


def test_freeze_batch_norm_replaces_torch_and_normlab_layers() -> None:
    torch_bn = _trained_bn(3)
    ours_bn = normlab.nn.BatchNorm2d(4, dtype=torch.float64, affine=False)
    ours_bn.load_state_dict(
        {k: v for k, v in _trained_bn(4).state_dict().items() if "running" in k or "num" in k}
    )
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, dtype=torch.float64),
        torch_bn,
        nn.Sequential(nn.Conv2d(3, 4, 1, dtype=torch.float64), ours_bn.eval()),
    )
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    expected = model.eval()(x)
    frozen = freeze_batch_norm(model).train()
    assert frozen is model
    assert isinstance(model[1], FrozenBatchNorm2d) and isinstance(model[2][1], FrozenBatchNorm2d)
    assert torch.equal(model[1].running_var, torch_bn.running_var)
    assert torch.equal(model[2][1].weight, torch.ones(4, dtype=torch.float64))
    assert model[2][1].running_mean.dtype == torch.float64
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-12)
    single = freeze_batch_norm(_trained_bn(2))
    assert isinstance(single, FrozenBatchNorm2d)


def test_freezing_a_layer_without_statistics_names_it() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(ValueError, match=r"keeps no running statistics.*track_running_stats=True"):
        freeze_batch_norm(model)


def test_gradcheck_and_gradgradcheck() -> None:
    bn = _trained_bn(3)
    args = [t.detach().clone().requires_grad_(True) for t in (bn.weight, bn.bias)]
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return frozen_batch_norm(x, w, b, bn.running_mean, bn.running_var, 1e-5)

    assert torch.autograd.gradcheck(f, (x, *args))
    assert torch.autograd.gradgradcheck(f, (x, *args))


def test_compiled_equals_eager() -> None:
    frozen = FrozenBatchNorm2d(4)
    frozen.load_state_dict(_trained_bn(4, torch.float32).state_dict())
    x = torch.randn(2, 4, 5, 5)
    compiled = torch.compile(frozen, fullgraph=True, backend=COMPILE_BACKEND)
    expected = frozen(x)
    bound = (x - frozen.running_mean.view(-1, 1, 1)).abs() * (
        frozen.weight / (frozen.running_var + frozen.eps).sqrt()
    ).abs().view(-1, 1, 1) + frozen.bias.abs().view(-1, 1, 1)
    assert_close_sum(compiled(x), expected, terms=3, abs_sum=bound)


@torch.no_grad()
def test_far_from_zero_float32_is_centred_before_it_is_scaled() -> None:
    """Mean 1e4, std 1e-2, statistics to match: the output keeps float32's accuracy, while
    torchvision's uncentred ``x * scale + (bias - mean * scale)`` misses by far more."""
    frozen = FrozenBatchNorm2d(3)
    frozen.weight.copy_(1 + 0.5 * torch.randn(3))
    frozen.bias.copy_(0.5 * torch.randn(3))
    frozen.running_mean.copy_(1e4 + 1e-2 * torch.randn(3))
    frozen.running_var.copy_(1e-4 * (0.5 + torch.rand(3)))
    x32 = 1e4 + 1e-2 * torch.randn(4, 3, 5, 5)
    reference = FrozenBatchNorm2d(3, dtype=torch.float64)
    reference.load_state_dict(frozen.state_dict())  # the same float32 numbers, in float64
    expected = reference(x32.double())
    scale = (reference.weight / (reference.running_var + reference.eps).sqrt()).view(-1, 1, 1)
    centred = (x32.double() - reference.running_mean.view(-1, 1, 1)).abs() * scale.abs()
    bound = centred + reference.bias.abs().view(-1, 1, 1)
    assert_close_sum(frozen(x32), expected, terms=4, abs_sum=bound)
    s32 = (frozen.weight * torch.rsqrt(frozen.running_var + frozen.eps)).view(-1, 1, 1)
    shift = frozen.bias.view(-1, 1, 1) - frozen.running_mean.view(-1, 1, 1) * s32
    uncentred = x32 * s32 + shift
    worst = float((uncentred.double() - expected).abs().max())
    assert worst > 100 * 24 * unit_roundoff(torch.float32) * float(bound.max())


def test_bfloat16_rounds_once_at_the_output() -> None:
    bn = _trained_bn(3)
    frozen = FrozenBatchNorm2d(3, dtype=torch.bfloat16)
    frozen.load_state_dict(bn.to(torch.bfloat16).state_dict())
    reference = FrozenBatchNorm2d(3, dtype=torch.float64)
    reference.load_state_dict(frozen.double().state_dict())
    frozen.to(torch.bfloat16)
    x = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    y = frozen(x)
    assert y.dtype == torch.bfloat16
    expected = reference(x.double())
    # float32 arithmetic (4 roundings) then one rounding to bfloat16
    tolerance = unit_roundoff(torch.bfloat16) * expected.abs() + 4 * unit_roundoff(
        torch.float32
    ) * (x.double().abs() * 10 + 10)
    assert bool(((y.double() - expected).abs() <= tolerance).all())


@pytest.mark.parametrize("features", [0, -2, 2.0, True])
def test_features_must_be_a_positive_integer(features: object) -> None:
    with pytest.raises(ValueError, match=r"num_features must be a positive integer, got"):
        FrozenBatchNorm2d(features)  # type: ignore[arg-type]


def test_input_must_be_4d() -> None:
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        FrozenBatchNorm2d(3)(torch.randn(2, 3, 4))
