"""FRN's closed-form backward and its eager fast path (``normlab.functional.filter_response``).

The oracle is autograd of the plain formula (``filter_response.forward``) in float64: the
closed form (``backward``) must equal it for every argument (input, weight, bias, tau, a
learned eps), and the eager fast path (one ``autograd.Function``) must equal the closed
form, in first and second order.

Tolerances: every gradient is a sum of products of ``dy`` with values of order
``|weight| * |x| * r`` (normalised responses, a few units) over at most ``N * m`` terms;
``abs_sum`` bounds that sum by ``10 * sum |dy|``.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from normlab.testing.graph import node_names
from normlab.testing.tolerance import assert_close_sum

frn = importlib.import_module("normlab.functional.filter_response")
F64 = torch.float64


def _arguments(shape: tuple[int, ...], dtype: torch.dtype = F64, learned_eps: bool = True):
    c = shape[1]
    x = 2 * torch.randn(shape, dtype=dtype)
    weight = 1 + 0.5 * torch.randn(c, dtype=dtype)
    bias, tau = 0.5 * torch.randn(c, dtype=dtype), 0.5 * torch.randn(c, dtype=dtype)
    eps = torch.tensor([0.05], dtype=dtype) if learned_eps else 1e-3
    return x, weight, bias, tau, eps


def _differentiable(args: tuple) -> list[torch.Tensor]:
    return [a.clone().requires_grad_(True) for a in args if isinstance(a, torch.Tensor)]


def _autograd_of(fn, args: tuple, dy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    leaves = _differentiable(args)
    it = iter(leaves)
    full = [next(it) if isinstance(a, torch.Tensor) else a for a in args]
    return torch.autograd.grad(fn(*full), leaves, dy)


def _close(actual: torch.Tensor, expected: torch.Tensor, dy: torch.Tensor, terms: int) -> None:
    assert_close_sum(actual, expected, terms=terms, abs_sum=10 * dy.abs().sum() + 1)


@pytest.mark.parametrize(
    ("shape", "learned_eps", "with_tau"),
    [
        ((3, 4, 5, 5), True, True),
        ((2, 3, 4, 6), False, True),
        ((5, 4), True, True),
        ((2, 3, 2, 3, 2), False, False),
        ((4, 2, 1, 1), True, True),
    ],
)
def test_closed_form_equals_autograd_of_the_formula(shape, learned_eps, with_tau) -> None:
    x, weight, bias, tau, eps = _arguments(shape, learned_eps=learned_eps)
    tau = tau if with_tau else None
    args = (x, weight, bias, tau, eps)
    dy = torch.randn(shape, dtype=F64)
    expected = iter(_autograd_of(frn.forward, args, dy))
    got = frn.backward(dy, *args)
    terms = x.numel()
    for closed, arg in zip(got, args, strict=True):
        if isinstance(arg, torch.Tensor):
            assert closed is not None and closed.shape == arg.shape
            _close(closed, next(expected), dy, terms)
        else:
            assert closed is None


def test_fast_path_is_one_function_whose_gradients_are_the_closed_form() -> None:
    args = _arguments((3, 4, 5, 5))
    leaves = _differentiable(args)
    y = frn.filter_response_norm(*leaves)
    names = node_names(y)
    assert "FilterResponseFunctionBackward" in names and "WhereBackward0" not in names
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    for got, expected in zip(grads, frn.backward(dy, *args), strict=True):
        _close(got, expected, dy, dy.numel())


def test_fast_path_float32_and_retained_graph() -> None:
    """float32 against the closed form in float64; a second backward through the retained
    graph gives the same gradients (the backward writes into no saved tensor)."""
    args = _arguments((4, 3, 6, 6), torch.float32)
    leaves = _differentiable(args)
    y = frn.filter_response_norm(*leaves)
    dy = torch.randn_like(y)
    first = torch.autograd.grad(y, leaves, dy, retain_graph=True)
    second = torch.autograd.grad(y, leaves, dy)
    expected = frn.backward(dy.double(), *(a.double() for a in args))
    for a, b, e in zip(first, second, expected, strict=True):
        assert torch.equal(a, b)
        assert_close_sum(a, e, terms=dy.numel(), abs_sum=10 * dy.abs().sum() + 1)


def test_gradcheck_and_gradgradcheck_through_the_fast_path() -> None:
    x, weight, bias, tau, eps = _differentiable(_arguments((2, 3, 3, 3)))

    def f(x, weight, bias, tau, eps):
        return frn.filter_response_norm(x, weight, bias, tau, 1e-6 + eps.abs())

    assert gradcheck(f, (x, weight, bias, tau, eps))
    assert gradgradcheck(f, (x, weight, bias, tau, eps))


def test_no_grad_and_bfloat16() -> None:
    x, weight, bias, tau, eps = _arguments((3, 4, 5, 5), torch.float32)
    with torch.no_grad():
        y = frn.filter_response_norm(x, weight, bias, tau, eps)
    expected = frn.forward(x.double(), weight.double(), bias.double(), tau.double(), eps.double())
    assert_close_sum(y, expected, terms=25, abs_sum=10 * expected.abs() + 10)
    leaves = _differentiable((x.bfloat16(), weight, bias, tau, eps))
    out = frn.filter_response_norm(*leaves)
    out.backward(torch.ones_like(out))
    assert out.dtype == torch.bfloat16 and leaves[0].grad.dtype == torch.bfloat16
    assert all(leaf.grad.dtype == torch.float32 for leaf in leaves[1:])


def test_a_tie_passes_through_in_both_paths() -> None:
    """x = 0 with bias = tau = 0 gives z = tau exactly: the TLU's value is tau, and all of
    dy goes to z (clamp's convention), in the plain formula's autograd and in the fast path
    alike: dbias is the sum of dy, dtau is 0."""
    x = torch.zeros(2, 3, 2, 2, dtype=F64, requires_grad=True)
    weight, bias, tau = (torch.zeros(3, dtype=F64, requires_grad=True) for _ in range(3))
    dy = torch.randn(2, 3, 2, 2, dtype=F64)
    fast = torch.autograd.grad(frn.filter_response_norm(x, weight, bias, tau), (bias, tau), dy)
    plain = torch.autograd.grad(frn.forward(x, weight, bias, tau, 1e-6), (bias, tau), dy)
    assert torch.equal(fast[0], dy.sum((0, 2, 3))) and torch.equal(
        fast[1], torch.zeros(3, dtype=F64)
    )
    assert torch.equal(plain[0], fast[0]) and torch.equal(plain[1], fast[1])
