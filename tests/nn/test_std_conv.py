"""StdConv2d and standardize_weight: the weight standardized as torch.nn.functional.batch_norm
of the weight viewed as (1, O, fan_in) (float64), and the registry's group-ws LeNet."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

from normlab.functional.weight_standardization import standardize_weight
from normlab.models.lenet import LeNet
from normlab.nn.conv import Conv2d
from normlab.nn.normalization import GroupNorm
from normlab.nn.registry import conv_layer
from normlab.nn.std_conv import StdConv2d
from normlab.testing import references
from normlab.testing.tolerance import assert_close_sum, sum_tolerance, unit_roundoff

COMPILE_BACKEND = "aot_eager" if os.environ.get("ATEN_CPU_CAPABILITY") == "default" else "inductor"

CONFIGS: list[tuple[tuple[Any, ...], dict[str, Any], tuple[int, ...]]] = [
    ((3, 4, 3), {}, (2, 3, 6, 6)),
    ((4, 6, 3), {"stride": 2, "padding": 1, "groups": 2}, (2, 4, 7, 7)),
    ((3, 4, (3, 2)), {"dilation": 2, "padding": 2, "padding_mode": "reflect"}, (2, 3, 8, 8)),
    ((1, 6, 5), {"bias": False, "eps": 1e-3}, (3, 1, 12, 12)),
]


@pytest.mark.parametrize(("args", "kwargs", "shape"), CONFIGS)
def test_equals_batch_norm_of_the_weight_then_conv2d_in_float64(
    args: tuple[Any, ...], kwargs: dict[str, Any], shape: tuple[int, ...]
) -> None:
    ours = StdConv2d(*args, **kwargs, dtype=torch.float64)
    oracle = references.StdConv2d(*args, **kwargs, dtype=torch.float64)
    oracle.load_state_dict(ours.state_dict())
    x = torch.randn(shape, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = ours(x1), oracle(x2)
    fan_in = ours.weight[0].numel()
    terms = fan_in * max(1, shape[0] * y2.shape[-1] * y2.shape[-2])
    assert_close_sum(y1, y2, terms=fan_in, abs_sum=fan_in * x.abs().max() * 10)
    upstream = torch.randn_like(y2)
    y1.backward(upstream)
    y2.backward(upstream)
    bound = terms * upstream.abs().max() * x.abs().max() * 10
    assert_close_sum(x1.grad, x2.grad, terms=terms, abs_sum=bound)
    assert_close_sum(ours.weight.grad, oracle.weight.grad, terms=terms, abs_sum=bound)
    if ours.bias is not None:
        assert_close_sum(ours.bias.grad, oracle.bias.grad, terms=terms, abs_sum=bound)


def test_standardized_weight_has_zero_mean_and_unit_variance_per_output_channel() -> None:
    w = 3 + 2 * torch.randn(8, 3, 3, 3, dtype=torch.float64)
    eps = 1e-6
    hat = standardize_weight(w, eps).flatten(1)
    var = w.flatten(1).var(1, correction=0)
    assert_close_sum(hat.mean(1), torch.zeros(8, dtype=torch.float64), terms=27, abs_sum=27 * 3.0)
    expected_var = var / (var + eps)  # eps inside the root
    assert_close_sum(hat.var(1, correction=0), expected_var, terms=27, abs_sum=27 * 10.0)


def test_gradcheck_and_gradgradcheck() -> None:
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: standardize_weight(w, 1e-3), (w,))
    assert torch.autograd.gradgradcheck(lambda w: standardize_weight(w, 1e-3), (w,))
    conv = StdConv2d(2, 4, 3, dtype=torch.float64)

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return conv._conv_forward(x, standardize_weight(w, conv.eps), conv.bias)

    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w))


def test_compiled_equals_eager() -> None:
    conv = StdConv2d(3, 8, 3, padding=1)
    compiled = torch.compile(conv, fullgraph=True, backend=COMPILE_BACKEND)
    x = torch.randn(2, 3, 6, 6)
    y = conv(x)
    assert_close_sum(compiled(x), y, terms=27, abs_sum=27 * x.abs().max() * 10)


def test_far_from_zero_float32_weights_against_float64() -> None:
    """Weights of mean 1e4, std 1e-2: the standardized weight keeps float32's accuracy."""
    w = 1e4 + 1e-2 * torch.randn(6, 3, 3, 3)
    expected = standardize_weight(w.double(), 1e-6)
    assert_close_sum(
        standardize_weight(w, 1e-6), expected, terms=27, abs_sum=(expected.abs() + 1) * 27
    )
    # E[w^2] - E[w]^2 in float32 loses the variance entirely
    flat = w.flatten(1)
    naive_var = (flat * flat).mean(1) - flat.mean(1) ** 2
    exact_var = w.double().flatten(1).var(1, correction=0)
    assert float((naive_var.double() - exact_var).abs().max()) > 100 * float(exact_var.max())


def test_bfloat16_rounds_once_at_the_end() -> None:
    conv = StdConv2d(3, 4, 3, dtype=torch.bfloat16)
    w = standardize_weight(conv.weight.detach())
    assert w.dtype == torch.bfloat16
    expected = standardize_weight(conv.weight.detach().double())
    tolerance = unit_roundoff(torch.bfloat16) * expected.abs() + sum_tolerance(
        torch.float32, 27, (expected.abs() + 1) * 27
    )
    assert bool(((w.double() - expected).abs() <= tolerance).all())
    assert conv(torch.randn(2, 3, 5, 5).to(torch.bfloat16)).dtype == torch.bfloat16


def test_state_dict_is_conv2ds_and_torchs_errors() -> None:
    ours, theirs = StdConv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    ours.load_state_dict(theirs.state_dict())
    assert isinstance(ours, nn.Conv2d)
    assert repr(ours) == "StdConv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), eps=1e-06)"
    with pytest.raises(ValueError, match="in_channels must be a positive integer, got 0"):
        StdConv2d(0, 4, 3)
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        StdConv2d(3, 4, 3, groups=2)


def test_group_ws_lenet_standardizes_its_convolutions() -> None:
    assert conv_layer("group-ws") is StdConv2d
    assert conv_layer("batch") is Conv2d and conv_layer(None) is Conv2d
    with pytest.raises(ValueError, match="unknown norm layer 'bogus'"):
        conv_layer("bogus")
    model = LeNet(norm="group-ws")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [type(m) for m in convs] == [StdConv2d, StdConv2d]
    assert [type(m) for _, m in model.norm_layers()] == [GroupNorm] * 4
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert all(m.weight.grad is not None for m in convs)
    assert list(model.state_dict()) == list(LeNet(norm="group").state_dict())
    assert [type(m) for m in LeNet(norm="group").modules() if isinstance(m, nn.Conv2d)] == [
        Conv2d,
        Conv2d,
    ]
