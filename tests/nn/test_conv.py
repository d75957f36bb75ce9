"""normlab.nn.conv.Conv2d: torch.nn.Conv2d's values and gradients (float64), on each path."""

from __future__ import annotations

import pytest
import torch

from normlab.models.lenet import LeNet
from normlab.nn.conv import Conv2d
from normlab.testing.tolerance import assert_close_sum

# (N, C, H, W), out_channels, kernel_size, bias; C == 1 is the im2col path, C > 1 the
# batch-as-channels weight gradient.
SHAPES = [
    ((64, 1, 28, 28), 6, 5, True),  # LeNet's first layer
    ((64, 6, 12, 12), 16, 5, True),  # LeNet's second layer
    ((3, 1, 5, 5), 2, 5, True),  # kernel as large as the input: a 1x1 output
    ((2, 1, 7, 9), 4, (2, 3), False),  # rectangular input and kernel, no bias
    ((2, 3, 7, 9), 4, 3, False),
    ((1, 2, 6, 6), 3, (2, 3), True),
]


def _twins(c: int, o: int, k: int | tuple[int, int], bias: bool, **kwargs: object):
    ours = Conv2d(c, o, k, bias=bias, **kwargs).double()
    theirs = torch.nn.Conv2d(c, o, k, bias=bias, **kwargs).double()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _grads(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    y = module(x)
    inputs = [x] if x.requires_grad else []
    return [y, *torch.autograd.grad(y, [*inputs, *module.parameters()], g)]


def _bounds(conv: torch.nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> list[tuple[int, object]]:
    """(terms, sum of |terms|) of each value ``_grads`` returns: a convolution and its
    gradients are bilinear, so the same maths on |x|, |w| and |g| sums the |products|."""
    absolute = torch.nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, bias=conv.bias is not None
    ).double()
    x, g = x.double(), g.double()
    with torch.no_grad():
        absolute.weight.copy_(conv.weight.abs())
        if conv.bias is not None:
            absolute.bias.copy_(conv.bias.abs())
    ax = x.detach().abs().requires_grad_(x.requires_grad)
    sums = _grads(absolute, ax, g.abs())
    c, (kh, kw) = conv.in_channels, conv.kernel_size
    n, (oh, ow) = x.shape[0], g.shape[-2:]
    terms = [c * kh * kw + 1]  # the output: a window's products and the bias
    if x.requires_grad:
        terms.append(conv.out_channels * kh * kw)  # each input pixel: the windows over it
    terms.append(n * oh * ow)  # the weight gradient: every position of every sample
    if conv.bias is not None:
        terms.append(n * oh * ow)
    return list(zip(terms, sums, strict=True))


@pytest.mark.parametrize("shape,o,k,bias", SHAPES)
@pytest.mark.parametrize("input_grad", [False, True])
def test_equals_torch_conv2d(shape, o, k, bias, input_grad: bool) -> None:
    ours, theirs = _twins(shape[1], o, k, bias)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=input_grad)
    y = ours(x)
    expected_path = "_Im2colConv" if shape[1] == 1 else "_BatchAsChannelsConv"
    assert type(y.grad_fn).__name__ == expected_path + "Backward"
    g = torch.randn_like(y)
    results = zip(_grads(ours, x, g), _grads(theirs, x, g), _bounds(theirs, x, g), strict=True)
    for mine, reference, (terms, abs_sum) in results:
        assert_close_sum(mine, reference, terms=terms, abs_sum=abs_sum)


@pytest.mark.parametrize("shape,o,k,bias", SHAPES[:2])
def test_float32_close_to_torch(shape, o, k, bias) -> None:
    ours, theirs = _twins(shape[1], o, k, bias)
    ours, theirs = ours.float(), theirs.float()
    x = torch.randn(shape)
    g = torch.randn(ours(x).shape)
    results = zip(_grads(ours, x, g), _grads(theirs, x, g), _bounds(theirs, x, g), strict=True)
    for mine, reference, (terms, abs_sum) in results:
        assert_close_sum(mine, reference, terms=terms, abs_sum=abs_sum)


@pytest.mark.parametrize("c", [1, 6])
def test_only_the_requested_gradients(c: int) -> None:
    ours, theirs = _twins(c, 4, 3, True)
    ours.bias.requires_grad_(False)
    theirs.bias.requires_grad_(False)
    x = torch.randn(2, c, 6, 6, dtype=torch.float64)
    g = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    (dw,) = torch.autograd.grad(ours(x), ours.weight, g)
    (reference,) = torch.autograd.grad(theirs(x), theirs.weight, g)
    (abs_sum,) = torch.autograd.grad(theirs(x.abs()), theirs.weight, g.abs())
    assert_close_sum(dw, reference, terms=2 * 4 * 4, abs_sum=abs_sum)


@pytest.mark.parametrize("c", [1, 3])
def test_first_and_second_derivatives(c: int) -> None:
    conv = Conv2d(c, 2, 3).double()
    x = torch.randn(2, c, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))
    assert torch.autograd.gradgradcheck(conv, (x,))


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        ({"stride": 2}, (2, 1, 9, 9)),
        ({"padding": 1}, (2, 1, 8, 8)),
        ({"padding": "same"}, (2, 3, 8, 8)),
        ({"dilation": 2}, (2, 3, 9, 9)),
        ({"groups": 3}, (2, 3, 8, 8)),
        ({"padding": 1, "padding_mode": "reflect"}, (2, 1, 8, 8)),
        ({}, (1, 8, 8)),  # no batch dimension
    ],
)
def test_other_configurations_take_torchs_path(kwargs: dict, shape: tuple[int, ...]) -> None:
    ours, theirs = _twins(shape[-3], 3, 3, True, **kwargs)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = ours(x)
    assert "Im2col" not in type(y.grad_fn).__name__
    assert "BatchAsChannels" not in type(y.grad_fn).__name__
    g = torch.randn_like(y)
    for mine, reference in zip(_grads(ours, x, g), _grads(theirs, x, g), strict=True):
        assert torch.equal(mine, reference)


def test_evaluation_and_non_contiguous_inputs_take_torchs_path() -> None:
    ours, theirs = _twins(3, 4, 3, True)
    x = torch.randn(2, 8, 8, 3, dtype=torch.float64).permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    assert ours(x).grad_fn.name() == theirs(x).grad_fn.name()
    with torch.no_grad():
        assert torch.equal(ours(x.contiguous()), theirs(x.contiguous()))


def test_a_wrong_channel_count_raises_torchs_error() -> None:
    conv = Conv2d(1, 2, 3)
    with pytest.raises(RuntimeError, match="channels"):
        conv(torch.randn(2, 3, 6, 6))


def test_lenet_uses_it_and_keeps_the_tutorials_keys() -> None:
    model = LeNet(norm="torch-batch")
    for index in (0, 4):
        assert isinstance(model.layers[index], Conv2d)
        assert isinstance(model.layers[index], torch.nn.Conv2d)
    keys = set(model.state_dict())
    assert {"layers.0.weight", "layers.0.bias", "layers.4.weight", "layers.4.bias"} <= keys
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
