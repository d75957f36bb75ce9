"""DyT's closed-form backward and its eager fast path (``normlab.functional.dynamic_tanh``).

The oracle is autograd of the plain formula (``dynamic_tanh.forward``) in float64: the
closed form (``backward``) must equal it for the input, ``alpha``, weight and bias, and
the eager fast path (one ``autograd.Function``) must equal the closed form, in first and
second order, on contiguous inputs and on a channels-last view (the registry's DyT of
convolutional maps). The fast path runs from ``FUNCTION_MIN_ELEMENTS`` elements on; the
tests of it lower that bound to 0 (``fast_path`` fixture) to run it on small inputs.

Tolerances: ``dx`` is a product of three factors (3 roundings); the parameters' gradients
are sums of ``dy`` times values of at most ``|weight| * |x|`` over all elements, bounded by
``10 * sum |dy| * max |x|``.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from normlab.testing.graph import node_names
from normlab.testing.tolerance import assert_close_sum

dyt = importlib.import_module("normlab.functional.dynamic_tanh")
F64 = torch.float64


@pytest.fixture
def fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path on inputs of any size."""
    monkeypatch.setattr(dyt, "FUNCTION_MIN_ELEMENTS", 0)


def _arguments(shape: tuple[int, ...], width: int, dtype: torch.dtype = F64):
    x = 3 * torch.randn(shape, dtype=dtype)
    alpha = torch.tensor([0.7], dtype=dtype)
    return x, alpha, 1 + 0.5 * torch.randn(width, dtype=dtype), torch.randn(width, dtype=dtype)


def _leaves(args) -> list[torch.Tensor]:
    return [a.clone().requires_grad_(True) for a in args if a is not None]


def _close(actual: torch.Tensor, expected: torch.Tensor, dy: torch.Tensor, x: torch.Tensor):
    assert actual.shape == expected.shape
    if actual.shape == x.shape:
        assert_close_sum(actual, expected, terms=3, abs_sum=10 * dy.abs() + 1e-300)
    else:
        bound = 10 * dy.abs().sum() * (x.abs().max() + 1)
        assert_close_sum(actual, expected, terms=x.numel(), abs_sum=bound)


@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_closed_form_equals_autograd_of_the_formula(affine: str) -> None:
    x, alpha, weight, bias = _arguments((4, 3, 6), 6)
    weight = weight if affine in ("both", "weight") else None
    bias = bias if affine in ("both", "bias") else None
    args = (x, alpha, weight, bias)
    leaves = _leaves(args)
    it = iter(leaves)
    y = dyt.forward(*(None if a is None else next(it) for a in args))
    dy = torch.randn_like(y)
    expected = iter(torch.autograd.grad(y, leaves, dy))
    for closed, arg in zip(dyt.backward(dy, *args), args, strict=True):
        if arg is None:
            assert closed is None
        else:
            _close(closed, next(expected), dy, x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_path_is_one_function_whose_gradients_are_the_closed_form(
    channels_last, fast_path: None
) -> None:
    x, alpha, weight, bias = _arguments((3, 5, 4, 4), 5 if channels_last else 4)
    leaves = _leaves((x, alpha, weight, bias))
    xin = leaves[0].movedim(1, -1) if channels_last else leaves[0]
    y = dyt.dynamic_tanh(xin, *leaves[1:])
    assert "DynamicTanhFunctionBackward" in node_names(y)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, dy)
    closed = dyt.backward(dy, x.movedim(1, -1) if channels_last else x, alpha, weight, bias)
    if channels_last:
        closed = (closed[0].movedim(-1, 1), *closed[1:])
    for a, b in zip(got, closed, strict=True):
        _close(a, b, dy.movedim(-1, 1) if channels_last else dy, x)


def test_float32_and_a_retained_graph(fast_path: None) -> None:
    args = _arguments((8, 16), 16, torch.float32)
    leaves = _leaves(args)
    y = dyt.dynamic_tanh(*leaves)
    dy = torch.randn_like(y)
    first = torch.autograd.grad(y, leaves, dy, retain_graph=True)
    second = torch.autograd.grad(y, leaves, dy)
    expected = dyt.backward(dy.double(), *(a.double() for a in args))
    for a, b, e in zip(first, second, expected, strict=True):
        assert torch.equal(a, b)
        assert_close_sum(a, e, terms=y.numel(), abs_sum=10 * dy.abs().sum() * 10)


def test_gradcheck_and_gradgradcheck_through_the_fast_path(fast_path: None) -> None:
    leaves = _leaves(_arguments((3, 2, 5), 5))
    assert gradcheck(dyt.dynamic_tanh, leaves)
    assert gradgradcheck(dyt.dynamic_tanh, leaves)
    x, alpha, weight, _ = leaves
    assert gradgradcheck(
        lambda x, alpha, weight: dyt.dynamic_tanh(x, alpha, weight, None), (x, alpha, weight)
    )


def test_no_grad_and_bfloat16(fast_path: None) -> None:
    x, alpha, weight, bias = _arguments((4, 6), 6, torch.float32)
    with torch.no_grad():
        y = dyt.dynamic_tanh(x, alpha, weight, bias)
    expected = dyt.forward(x.double(), alpha.double(), weight.double(), bias.double())
    assert_close_sum(y, expected, terms=3, abs_sum=expected.abs() + 1)
    leaves = _leaves((x.bfloat16(), alpha, weight, bias))
    out = dyt.dynamic_tanh(*leaves)
    out.backward(torch.ones_like(out))
    assert out.dtype == torch.bfloat16 and leaves[0].grad.dtype == torch.bfloat16
    assert all(leaf.grad.dtype == torch.float32 for leaf in leaves[1:])


def test_small_inputs_run_the_plain_formula() -> None:
    """Below ``FUNCTION_MIN_ELEMENTS`` elements the plain formula's autograd graph is
    recorded (three nodes in C++, cheaper than one Python ``autograd.Function``); from it
    on, the fast path."""
    small = _leaves(_arguments((2, dyt.FUNCTION_MIN_ELEMENTS // 8 - 1, 4), 4))
    large = _leaves(_arguments((2, dyt.FUNCTION_MIN_ELEMENTS // 8, 4), 4))
    assert "DynamicTanhFunctionBackward" not in node_names(dyt.dynamic_tanh(*small))
    assert "DynamicTanhFunctionBackward" in node_names(dyt.dynamic_tanh(*large))
