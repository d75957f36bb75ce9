"""DynamicTanh and convert_layer_norms_to_dyt against Zhu et al.'s formula in float64."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import normlab.nn
from normlab.functional.dynamic_tanh import dynamic_tanh
from normlab.nn.dynamic_tanh import DynamicTanh, convert_layer_norms_to_dyt
from normlab.testing import references
from normlab.testing.tolerance import assert_close_sum, unit_roundoff

COMPILE_BACKEND = "aot_eager" if os.environ.get("ATEN_CPU_CAPABILITY") == "default" else "inductor"


def _pair(shape: int | list[int], dtype: torch.dtype = torch.float64, alpha: float = 0.5):
    ours = DynamicTanh(shape, alpha, dtype=dtype)
    with torch.no_grad():
        ours.weight.copy_(1 + 0.5 * torch.randn_like(ours.weight))
        ours.bias.copy_(0.5 * torch.randn_like(ours.bias))
    oracle = references.DynamicTanh(shape, alpha, dtype=torch.float64)
    oracle.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    return ours, oracle


@pytest.mark.parametrize(("shape", "input_shape"), [(6, (4, 6)), ([3, 4], (2, 5, 3, 4))])
def test_equals_the_papers_formula_in_float64(shape: int | list[int], input_shape: tuple) -> None:
    ours, oracle = _pair(shape, alpha=0.8)
    x = 3 * torch.randn(input_shape, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = ours(x1), oracle(x2)
    assert_close_sum(y1, y2, terms=3, abs_sum=y2.abs() + 1)
    upstream = torch.randn_like(y2)
    y1.backward(upstream)
    y2.backward(upstream)
    assert_close_sum(x1.grad, x2.grad, terms=3, abs_sum=upstream.abs() * 10)
    theirs = dict(oracle.named_parameters())
    n = x.numel()
    for name, p in ours.named_parameters():
        assert_close_sum(p.grad, theirs[name].grad, terms=n, abs_sum=n * upstream.abs().max() * 10)


def test_gradcheck_and_gradgradcheck() -> None:
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    w, b = (torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(dynamic_tanh, (x, alpha, w, b))
    assert torch.autograd.gradgradcheck(dynamic_tanh, (x, alpha, w, b))


def test_compiled_equals_eager() -> None:
    layer, _ = _pair(8, torch.float32)
    compiled = torch.compile(layer, fullgraph=True, backend=COMPILE_BACKEND)
    x = torch.randn(4, 8)
    y = layer(x)
    assert_close_sum(compiled(x), y, terms=3, abs_sum=y.abs() + 1)


def test_far_from_zero_float32_saturates_as_float64() -> None:
    layer, oracle = _pair(6, torch.float32)
    x = 1e4 + 1e-2 * torch.randn(4, 6)
    expected = oracle(x.double())
    assert_close_sum(layer(x), expected, terms=3, abs_sum=expected.abs() + 1)


def test_bfloat16_rounds_once() -> None:
    layer, oracle = _pair(6, torch.bfloat16)
    x = (2 * torch.randn(4, 6)).to(torch.bfloat16)
    y, expected = layer(x), oracle(x.double())
    assert y.dtype == torch.bfloat16
    tolerance = unit_roundoff(torch.bfloat16) * expected.abs() + 6 * unit_roundoff(
        torch.float32
    ) * (expected.abs() + 1)
    assert bool(((y.double() - expected).abs() <= tolerance).all())


def test_parameters_state_dict_and_errors() -> None:
    layer = DynamicTanh([2, 3], alpha_init_value=0.7)
    assert list(layer.state_dict()) == ["alpha", "weight", "bias"]
    assert layer.alpha.shape == (1,) and float(layer.alpha) == pytest.approx(0.7)
    assert layer.weight.shape == (2, 3)
    assert repr(layer) == "DynamicTanh((2, 3), alpha_init_value=0.7)"
    for bad in (0, [3, 0], []):
        with pytest.raises(ValueError, match="normalized_shape must be positive integers"):
            DynamicTanh(bad)
    with pytest.raises(ValueError, match=r"expected input with trailing shape \[2, 3\]"):
        layer(torch.randn(4, 3, 2))


def test_convert_replaces_torch_and_normlab_layer_norms() -> None:
    model = nn.Sequential(
        nn.Linear(4, 4, dtype=torch.float64),
        nn.LayerNorm(4, dtype=torch.float64),
        nn.Sequential(normlab.nn.LayerNorm([2, 2], dtype=torch.float64)),
    )
    assert convert_layer_norms_to_dyt(model, alpha_init_value=0.3) is model
    assert isinstance(model[1], DynamicTanh) and isinstance(model[2][0], DynamicTanh)
    assert model[2][0].normalized_shape == (2, 2)
    assert model[1].weight.dtype == torch.float64 and float(model[1].alpha) == pytest.approx(0.3)
    assert isinstance(convert_layer_norms_to_dyt(nn.LayerNorm(3)), DynamicTanh)


def test_registry_applies_it_over_channels() -> None:
    conv = normlab.nn.create_norm_layer("dyt", 6, dims=2)
    x = torch.randn(2, 6, 3, 3)
    expected = torch.tanh(0.5 * x)  # weight 1, bias 0
    assert_close_sum(conv(x), expected, terms=2, abs_sum=expected.abs() + 1)
    assert isinstance(normlab.nn.create_norm_layer("dyt", 6, dims=0), DynamicTanh)


def test_autograd_gives_the_closed_form_backward() -> None:
    """dL/dx = dL/dy weight alpha (1 - tanh^2(alpha x)); dL/dalpha = sum(dL/dy weight x
    (1 - tanh^2)); dL/dweight = sum over leading dims of dL/dy tanh; dL/dbias = sum dL/dy."""
    x = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    weight, bias = (torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    y = dynamic_tanh(x, alpha, weight, bias)
    upstream = torch.randn_like(y)
    dx, dalpha, dweight, dbias = torch.autograd.grad(y, (x, alpha, weight, bias), upstream)
    with torch.no_grad():
        t = torch.tanh(alpha * x)
        slope = upstream * weight * (1 - t.square())
        bound = upstream.abs().sum() * 10
        assert_close_sum(dx, slope * alpha, terms=3, abs_sum=slope.abs() + 1)
        assert_close_sum(dalpha, (slope * x).sum().view(1), terms=x.numel(), abs_sum=bound * 10)
        assert_close_sum(dweight, (upstream * t).sum((0, 1)), terms=12, abs_sum=bound)
        assert_close_sum(dbias, upstream.sum((0, 1)), terms=12, abs_sum=bound)
