"""EvoNorm-B0's and S0's closed-form backwards and their eager fast paths
(``normlab.functional.evonorm``).

The oracle is autograd of the plain formulas (``evonorm.b0_forward``, ``s0_forward``) in
float64: the closed forms (``b0_backward``, ``s0_backward``) must equal it for the input,
weight, bias and ``v`` (B0 in training, with the batch variance, and in evaluation, with
the running variance), and the eager fast paths (one ``autograd.Function`` each) must
equal the closed forms, in first and second order, with B0's running variance updated as
the plain formula updates it.

Tolerances: every gradient is a sum of products of ``dy`` with normalised values (a few
units) over at most ``N * C * m`` terms; ``abs_sum`` bounds that sum by ``10 * sum |dy|``.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from normlab.testing.graph import node_names
from normlab.testing.tolerance import assert_close_sum

evonorm = importlib.import_module("normlab.functional.evonorm")
F64 = torch.float64


@pytest.fixture(autouse=True)
def fast_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The eager fast paths on inputs of any size (these tests' inputs are small)."""
    monkeypatch.setattr(evonorm, "B0_FUNCTION_MIN_ELEMENTS", 0)
    monkeypatch.setattr(evonorm, "S0_FUNCTION_MIN_ELEMENTS", 0)


def _parameters(c: int, dtype: torch.dtype = F64) -> tuple[torch.Tensor, ...]:
    weight, v = 1 + 0.3 * torch.randn(c, dtype=dtype), 1 + 0.3 * torch.randn(c, dtype=dtype)
    return weight, 0.3 * torch.randn(c, dtype=dtype), v


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.clone().requires_grad_(True) for t in tensors]


def _close(actual: torch.Tensor, expected: torch.Tensor, dy: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert_close_sum(actual, expected, terms=dy.numel(), abs_sum=10 * dy.abs().sum() + 1)


def _running_var(c: int) -> torch.Tensor:
    return 0.5 + torch.rand(c, dtype=F64)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (3, 2, 2, 3, 2), (6, 4, 1, 1)])
def test_b0_closed_form_equals_autograd_of_the_formula(shape, training: bool) -> None:
    x = 2 * torch.randn(shape, dtype=F64) + 1
    weight, bias, v = _parameters(shape[1])
    running = _running_var(shape[1])
    dy = torch.randn(shape, dtype=F64)
    xl, wl, bl, vl = _leaves(x, weight, bias, v)
    y = evonorm.b0_forward(xl, running.clone(), wl, bl, vl, training, 0.1, 1e-5)
    expected = torch.autograd.grad(y, (xl, wl, bl, vl), dy)
    got = evonorm.b0_backward(dy, x, weight, v, None if training else running, 1e-5)
    for closed, oracle in zip(got, expected, strict=True):
        _close(closed, oracle, dy)


@pytest.mark.parametrize(
    ("shape", "groups"), [((3, 4, 4, 4), 2), ((2, 6, 3, 5), 6), ((4, 4, 1, 1), 1)]
)
def test_s0_closed_form_equals_autograd_of_the_formula(shape, groups: int) -> None:
    x = 2 * torch.randn(shape, dtype=F64) + 1
    weight, bias, v = _parameters(shape[1])
    dy = torch.randn(shape, dtype=F64)
    xl, wl, bl, vl = _leaves(x, weight, bias, v)
    y = evonorm.s0_forward(xl, wl, bl, vl, groups, 1e-5)
    expected = torch.autograd.grad(y, (xl, wl, bl, vl), dy)
    got = evonorm.s0_backward(dy, x, weight, v, groups, 1e-5)
    for closed, oracle in zip(got, expected, strict=True):
        _close(closed, oracle, dy)


@pytest.mark.parametrize("training", [True, False])
def test_b0_fast_path_equals_the_closed_form_and_updates_the_running_variance(training) -> None:
    x = 2 * torch.randn(4, 3, 5, 5, dtype=F64) + 1
    weight, bias, v = _parameters(3)
    running = _running_var(3)
    fast_running, plain_running = running.clone(), running.clone()
    leaves = _leaves(x, weight, bias, v)
    y = evonorm.evonorm_b0(leaves[0], fast_running, *leaves[1:], training, 0.2, 1e-5)
    assert "EvoNormB0FunctionBackward" in node_names(y)
    expected_y = evonorm.b0_forward(x, plain_running, weight, bias, v, training, 0.2, 1e-5)
    assert_close_sum(y, expected_y, terms=100, abs_sum=10 * expected_y.abs() + 10)
    assert_close_sum(fast_running, plain_running, terms=100, abs_sum=10 * plain_running)
    assert torch.equal(fast_running, running) != training
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, dy)
    closed = evonorm.b0_backward(dy, x, weight, v, None if training else running, 1e-5)
    for a, b in zip(got, closed, strict=True):
        _close(a, b, dy)


def test_s0_fast_path_equals_the_closed_form() -> None:
    x = 2 * torch.randn(3, 4, 5, 5, dtype=F64) + 1
    weight, bias, v = _parameters(4)
    leaves = _leaves(x, weight, bias, v)
    y = evonorm.evonorm_s0(*leaves, 2, 1e-5)
    assert "EvoNormS0FunctionBackward" in node_names(y)
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, dy)
    for a, b in zip(got, evonorm.s0_backward(dy, x, weight, v, 2, 1e-5), strict=True):
        _close(a, b, dy)


@pytest.mark.parametrize("layer", ["b0 training", "b0 evaluation", "s0"])
def test_float32_far_from_zero_and_a_retained_graph(layer: str) -> None:
    """float32 at 1e4 + 1e-2 noise (statistics shifted: no digits lost) against the closed
    form in float64; a second backward through the retained graph is the same."""
    x = 1e4 + 1e-2 * torch.randn(4, 4, 5, 5)
    weight, bias, v = _parameters(4, torch.float32)
    running = torch.full((4,), 1e-4)
    leaves = _leaves(x, weight, bias, v)
    if layer == "s0":
        y = evonorm.evonorm_s0(*leaves, 2, 1e-5)
        expected = evonorm.s0_forward(*(t.double() for t in (x, weight, bias, v)), 2, 1e-5)
    else:
        training = layer == "b0 training"
        args = (leaves[0], running.clone(), *leaves[1:], training, 0.1, 1e-5)
        y = evonorm.evonorm_b0(*args)
        double = (x.double(), running.double(), weight.double(), bias.double(), v.double())
        expected = evonorm.b0_forward(*double, training, 0.1, 1e-5)
    assert_close_sum(y, expected, terms=100, abs_sum=10 * expected.abs())
    dy = torch.randn_like(y)
    first = torch.autograd.grad(y, leaves, dy, retain_graph=True)
    second = torch.autograd.grad(y, leaves, dy)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_gradcheck_and_gradgradcheck_through_the_fast_paths() -> None:
    x = torch.randn(3, 4, 3, 3, dtype=F64)
    leaves = _leaves(x, *_parameters(4))
    running = _running_var(4)
    for training in (True, False):

        def b0(x, w, b, v, training=training):
            return evonorm.evonorm_b0(x, running.clone(), w, b, v, training, 0.1, 1e-5)

        assert gradcheck(b0, leaves)
        assert gradgradcheck(b0, leaves)

    def s0(x, w, b, v):
        return evonorm.evonorm_s0(x, w, b, v, 2, 1e-5)

    assert gradcheck(s0, leaves)
    assert gradgradcheck(s0, leaves)


def test_no_grad_paths_and_bfloat16() -> None:
    x = 2 * torch.randn(4, 4, 5, 5) + 1
    weight, bias, v = _parameters(4, torch.float32)
    running, plain_running = torch.ones(4), torch.ones(4, dtype=F64)
    double = (weight.double(), bias.double(), v.double())
    with torch.no_grad():
        y = evonorm.evonorm_b0(x, running, weight, bias, v, True, 0.1, 1e-5)
        z = evonorm.evonorm_s0(x, weight, bias, v, 2, 1e-5)
    expected = evonorm.b0_forward(x.double(), plain_running, *double, True, 0.1, 1e-5)
    assert_close_sum(y, expected, terms=100, abs_sum=10 * expected.abs() + 10)
    assert_close_sum(running, plain_running, terms=100, abs_sum=10 * plain_running)
    expected = evonorm.s0_forward(x.double(), *double, 2, 1e-5)
    assert_close_sum(z, expected, terms=100, abs_sum=10 * expected.abs() + 10)
    for call in (
        lambda t, w, b, v: evonorm.evonorm_b0(t, torch.ones(4), w, b, v, True),
        lambda t, w, b, v: evonorm.evonorm_s0(t, w, b, v, 2),
    ):
        leaves = _leaves(x.bfloat16(), weight, bias, v)
        out = call(*leaves)
        out.backward(torch.ones_like(out))
        assert out.dtype == torch.bfloat16 and leaves[0].grad.dtype == torch.bfloat16
        assert all(leaf.grad.dtype == torch.float32 for leaf in leaves[1:])


def _compiled_s0_gradients(x: torch.Tensor, params: tuple, dy: torch.Tensor) -> tuple:
    backend = "aot_eager" if os.environ.get("ATEN_CPU_CAPABILITY") == "default" else "inductor"
    torch._dynamo.reset()
    compiled = torch.compile(evonorm.evonorm_s0, fullgraph=True, backend=backend)
    leaves = _leaves(x, *params)
    y = compiled(*leaves, 2, 1e-5)
    return y, torch.autograd.grad(y, leaves, dy)


def test_s0_compiled_equals_the_eager_fast_path() -> None:
    """Under torch.compile(fullgraph=True): outputs and all four gradients equal the eager
    fast path's."""
    x = 2 * torch.randn(3, 4, 5, 5) + 1
    params = _parameters(4, torch.float32)
    leaves = _leaves(x, *params)
    y = evonorm.evonorm_s0(*leaves, 2, 1e-5)
    dy = torch.randn_like(y)
    y_compiled, grads = _compiled_s0_gradients(x, params, dy)
    assert_close_sum(y_compiled, y, terms=100, abs_sum=10 * y.abs() + 10)
    for a, b in zip(grads, torch.autograd.grad(y, leaves, dy), strict=True):
        assert_close_sum(a, b, terms=dy.numel(), abs_sum=10 * dy.abs().sum() + 1)


def test_s0_compiled_traces_the_closed_form_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe in place of ``s0_backward`` that doubles ``dbias``: the compiled graph's
    ``dbias`` doubles too, so its backward is the closed form (not autograd of the formula)."""
    closed_form = evonorm.s0_backward

    def probe(*args: object) -> tuple:
        dx, dweight, dbias, dv = closed_form(*args)
        return dx, dweight, 2 * dbias, dv

    monkeypatch.setattr(evonorm, "s0_backward", probe)
    x, params = torch.randn(2, 4, 3, 3), _parameters(4, torch.float32)
    dy = torch.randn_like(x)
    _, grads = _compiled_s0_gradients(x, params, dy)
    assert_close_sum(grads[2], 2 * dy.sum((0, 2, 3)), terms=18, abs_sum=2 * dy.abs().sum())


@pytest.mark.parametrize("layer", ["b0", "s0"])
def test_small_inputs_run_the_plain_formula(layer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below the layer's ``*_FUNCTION_MIN_ELEMENTS`` the plain formula's autograd graph is
    recorded (its C++ nodes cost less than one Python ``autograd.Function`` there); from
    it on, the fast path; both give the same values and gradients."""
    minimum = 64
    monkeypatch.setattr(evonorm, f"{layer.upper()}_FUNCTION_MIN_ELEMENTS", minimum)
    weight, bias, v = _parameters(4)
    node = f"EvoNorm{layer.upper()}FunctionBackward"
    results = []
    for n, expect_function in ((3, False), (4, True)):  # 3 x 4 x 2 x 2 = 48 < 64 <= 64
        x = 2 * torch.randn(n, 4, 2, 2, dtype=F64) + 1
        leaves = _leaves(x, weight, bias, v)
        if layer == "b0":
            y = evonorm.evonorm_b0(leaves[0], _running_var(4), *leaves[1:], True, 0.1, 1e-5)
            closed = evonorm.b0_forward(x, _running_var(4), weight, bias, v, True, 0.1, 1e-5)
        else:
            y = evonorm.evonorm_s0(*leaves, 2, 1e-5)
            closed = evonorm.s0_forward(x, weight, bias, v, 2, 1e-5)
        assert (node in node_names(y)) == expect_function
        assert_close_sum(y, closed, terms=x.numel(), abs_sum=10 * closed.abs() + 10)
        dy = torch.randn_like(y)
        results.append((torch.autograd.grad(y, leaves, dy), dy, x))
    for grads, dy, x in results:  # the graph of either path against the closed form
        if layer == "b0":
            closed_grads = evonorm.b0_backward(dy, x, weight, v, None, 1e-5)
        else:
            closed_grads = evonorm.s0_backward(dy, x, weight, v, 2, 1e-5)
        for a, b in zip(grads, closed_grads, strict=True):
            _close(a, b, dy)
