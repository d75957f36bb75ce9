"""The kernels' single operators with their backward in C++ (``autograd.cpp``):
``normlab::batch_norm_train``, ``normlab::layer_norm``, ``normlab::group_norm``.

Oracle: ``torch.nn.functional`` in float64 (forward, gradients, running statistics);
float32 results are held to the rounding bound of the sums involved. Also: gradcheck and
gradgradcheck (the double backward's differentiable closed form), FakeTensor shapes and
``torch.compile(fullgraph=True)``, bad input refused with one clear message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from normlab import kernels
from normlab.testing.tolerance import assert_close_sum

F64 = torch.float64


@pytest.fixture
def ops() -> Any:
    library = kernels.ops()
    if library is None:
        pytest.skip("normlab's CPU kernels are not built or are off (NORMLAB_KERNELS=0)")
    return library


def _params(c: int | tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.rand(c, dtype=dtype) + 0.5
    bias = torch.randn(c, dtype=dtype)
    return weight.requires_grad_(), bias.requires_grad_()


# (name, input shape, parameter shape, ours(ops, x, w, b), torch's(x, w, b))
Case = tuple[str, tuple[int, ...], tuple[int, ...], Callable[..., Any], Callable[..., Any]]
CASES: list[Case] = [
    (
        "batch 4d",
        (6, 3, 5, 4),
        (3,),
        lambda ops, x, w, b: ops.batch_norm_train(x, w, b, None, None, 0.1, 1e-5),
        lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5),
    ),
    (
        "batch 2d",
        (16, 7),
        (7,),
        lambda ops, x, w, b: ops.batch_norm_train(x, w, b, None, None, 0.1, 1e-5),
        lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5),
    ),
    (
        "layer",
        (4, 3, 5, 6),
        (5, 6),
        lambda ops, x, w, b: ops.layer_norm(x, [5, 6], w, b, 1e-5),
        lambda x, w, b: F.layer_norm(x, [5, 6], w, b, 1e-5),
    ),
    (
        "group",
        (4, 6, 3, 3),
        (6,),
        lambda ops, x, w, b: ops.group_norm(x, 3, w, b, 1e-5),
        lambda x, w, b: F.group_norm(x, 3, w, b, 1e-5),
    ),
]
IDS = [case[0] for case in CASES]


def _fwd_bwd(fn: Callable[..., Any], x, w, b, dy) -> list[torch.Tensor]:
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b)
    return [y.detach(), *torch.autograd.grad(y, [x, w, b], dy)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_gradients_equal_torch_in_float64(ops: Any, case: Case) -> None:
    _, shape, pshape, ours, theirs = case
    x, dy = torch.randn(shape, dtype=F64), torch.randn(shape, dtype=F64)
    w, b = _params(pshape, F64)
    mine = _fwd_bwd(lambda *a: ours(ops, *a), x, w, b, dy)
    exact = _fwd_bwd(theirs, x, w, b, dy)
    n = x.numel()
    for a, e in zip(mine, exact, strict=True):
        # sums of at most n terms of the size of the largest value, summed in another order
        assert_close_sum(a, e, terms=n, abs_sum=e.abs().max() + 1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_is_within_the_rounding_bound_of_float64(ops: Any, case: Case) -> None:
    _, shape, pshape, ours, theirs = case
    x, dy = torch.randn(shape, dtype=F64) * 2 + 0.5, torch.randn(shape, dtype=F64)
    w, b = _params(pshape, F64)
    x32, dy32, w32, b32 = (t.detach().float() for t in (x, dy, w, b))
    mine = _fwd_bwd(lambda *a: ours(ops, *a), x32, w32, b32, dy32)
    exact = _fwd_bwd(theirs, x32.double(), w32.double(), b32.double(), dy32.double())
    n = x.numel()
    for a, e in zip(mine, exact, strict=True):
        # sums of at most n terms of the size of the largest value, summed in another order
        assert_close_sum(a, e, terms=n, abs_sum=e.abs().max() + 1, dtype=torch.float32)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck_and_gradgradcheck(ops: Any, case: Case) -> None:
    _, shape, pshape, ours, _ = case
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    w, b = _params(pshape, F64)

    def fn(*inputs: torch.Tensor) -> torch.Tensor:
        return ours(ops, *inputs)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


W6, B6 = torch.rand(6, dtype=F64) + 0.5, torch.randn(6, dtype=F64)
W33, B33 = torch.rand(3, 3, dtype=F64) + 0.5, torch.randn(3, 3, dtype=F64)
# (name, op(ops, x) on a (4, 6, 3, 3) float64 input, whether the backward saves the input)
GRAPH_CASES = [
    ("batch", lambda ops, x: ops.batch_norm_train(x, W6, B6, None, None, 0.1, 1e-5), True),
    ("layer", lambda ops, x: ops.layer_norm(x, [3, 3], W33, B33, 1e-5), True),
    ("group", lambda ops, x: ops.group_norm(x, 2, W6, B6, 1e-5), True),
    ("rms", lambda ops, x: ops.rms_norm(x, [3, 3], W33, 1e-5), True),
    ("frozen", lambda ops, x: ops.frozen_batch_norm(x, W6, B6, B6, W6, 1e-5), False),
]


@pytest.mark.parametrize(
    ("name", "call", "saves_input"), GRAPH_CASES, ids=[c[0] for c in GRAPH_CASES]
)
def test_the_backward_node_keeps_autograd_s_rules(ops: Any, name: str, call, saves_input) -> None:
    """The operators' backward nodes save tensors as autograd's own do: a second backward
    needs retain_graph (and then gives the same gradient), a saved input changed in place
    after the forward is refused, saved-tensor hooks see what is saved, and the node is
    named after its operator."""
    x = torch.randn(4, 6, 3, 3, dtype=F64, requires_grad=True)
    y = call(ops, x)
    assert y.grad_fn.name().startswith("normlab::")
    first = torch.autograd.grad(y.sum(), [x], retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(y.sum(), [x])[0], first, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(y.sum(), [x])
    packed: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        call(ops, x)
    assert packed and any(t is x for t in packed) == saves_input
    if saves_input:  # (hooks turn autograd's version check off: a forward without them)
        changed = x.detach().clone().requires_grad_()
        y = call(ops, changed)
        with torch.no_grad():
            changed.mul_(2)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            torch.autograd.grad(y.sum(), [changed])


@pytest.mark.parametrize(
    ("call", "bias_shape"),
    [
        (lambda ops, x, b: ops.batch_norm_train(x, None, b, None, None, 0.1, 1e-5), (6,)),
        (lambda ops, x, b: ops.layer_norm(x, [3, 3], None, b, 1e-5), (3, 3)),
        (lambda ops, x, b: ops.group_norm(x, 2, None, b, 1e-5), (6,)),
    ],
    ids=["batch", "layer", "group"],
)
def test_a_bias_without_weight_gets_its_gradient(ops: Any, call, bias_shape) -> None:
    """Without a weight, the bias still gets its gradient (the weight's edge is empty)."""
    x = torch.randn(4, 6, 3, 3, dtype=F64, requires_grad=True)
    bias = torch.randn(bias_shape, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: call(ops, x, b), (x, bias))
    x_only = torch.autograd.grad(call(ops, x, bias.detach()).pow(2).sum(), [x])
    assert x_only[0].shape == x.shape


def test_running_statistics_move_as_torch_nn_s(ops: Any) -> None:
    x = torch.randn(8, 3, 4, 4, dtype=F64) * 3 + 1
    mean, var = torch.rand(3, dtype=F64), torch.rand(3, dtype=F64) + 0.5
    ours_mean, ours_var = mean.clone(), var.clone()
    ops.batch_norm_train(x, None, None, ours_mean, ours_var, 0.25, 1e-5)
    F.batch_norm(x, mean, var, None, None, True, 0.25, 1e-5)
    n = x.numel() // 3
    assert_close_sum(ours_mean, mean, terms=n, abs_sum=x.abs().amax((0, 2, 3)) + 1)
    assert_close_sum(ours_var, var, terms=n, abs_sum=(x * x).amax((0, 2, 3)) + 1)


def test_a_strided_input_and_gradient_are_taken(ops: Any) -> None:
    x = torch.randn(5, 4, 6, dtype=F64).transpose(1, 2)  # (5, 6, 4), not contiguous
    w, b = _params((4,), F64)
    dy = torch.randn(5, 4, 6, dtype=F64).transpose(1, 2)
    mine = _fwd_bwd(lambda *a: ops.layer_norm(*a[:1], [4], *a[1:], 1e-5), x, w, b, dy)
    exact = _fwd_bwd(lambda x, w, b: F.layer_norm(x, [4], w, b, 1e-5), x, w, b, dy)
    for a, e in zip(mine, exact, strict=True):
        assert_close_sum(a, e, terms=x.numel(), abs_sum=e.abs().max() + 1)


def test_fake_tensors_get_the_output_shape(ops: Any) -> None:
    with FakeTensorMode():
        x, w = torch.randn(8, 4, 5, 5), torch.ones(4)
        assert ops.batch_norm_train(x, w, w, None, None, 0.1, 1e-5).shape == x.shape
        assert ops.group_norm(x, 2, w, w, 1e-5).shape == x.shape
        assert ops.layer_norm(x, [5], None, None, 1e-5).shape == x.shape


def test_compiled_fullgraph_equals_eager_with_running_statistics(ops: Any) -> None:
    torch._dynamo.reset()
    stats = [torch.zeros(4), torch.ones(4)]

    def step(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = ops.batch_norm_train(x, w, b, stats[0], stats[1], 0.1, 1e-5)
        return ops.group_norm(y, 2, w, b, 1e-5).sin().sum()

    x = torch.randn(8, 4, 5, 5)
    w, b = _params((4,), torch.float32)
    eager = _fwd_bwd(step, x, w, b, torch.tensor(1.0))
    eager_stats = [s.clone() for s in stats]
    stats[0].zero_(), stats[1].fill_(1)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    traced = _fwd_bwd(compiled, x, w, b, torch.tensor(1.0))
    for a, e in zip([*traced, *stats], [*eager, *eager_stats], strict=True):
        assert_close_sum(a, e, terms=x.numel(), abs_sum=e.abs().max() + 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda ops: ops.batch_norm_train(torch.ones(4, 3, dtype=torch.int64), None, None,
                                             None, None, 0.1, 1e-5),
            "expected a float32 or float64 input, got Long",
        ),
        (
            lambda ops: ops.group_norm(torch.randn(2, 6, 3), 4, None, None, 1e-5),
            "number of channels 6 to be divisible by num_groups 4",
        ),
        (
            lambda ops: ops.layer_norm(torch.randn(2, 6, 3), [6], None, None, 1e-5),
            "normalized_shape \\[6\\] must be the trailing dims",
        ),
        (
            lambda ops: ops.layer_norm(torch.randn(2, 3), [3], torch.ones(3, dtype=F64), None,
                                       1e-5),
            "weight and bias must have the input's dtype Float",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error(ops: Any, call, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call(ops)
