"""RMS norm as one operator with its backward in C++ (``rms_norm.cpp``): ``normlab::rms_norm``.

Oracles: ``torch.nn.functional.rms_norm`` in float64, and the closed form of
:mod:`normlab.functional.rmsnorm` (``forward``, ``backward``) in float64; float32 results
are held to the rounding bound of the row sums involved. Also: gradcheck and
gradgradcheck, empty, strided and channels-last inputs, FakeTensor shapes and
``torch.compile(fullgraph=True)``, bad input refused with one clear message, and that the
public ``rms_norm`` takes the operator where it applies (and bfloat16 the tensor code).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import normlab.functional as N
from normlab import kernels, nn
from normlab.functional import rmsnorm
from normlab.testing.tolerance import assert_close_sum

F64 = torch.float64

# (input shape, normalized_shape, with a weight)
SHAPES = [
    ((6, 7), (7,), True),
    ((4, 3, 5, 6), (5, 6), True),
    ((3, 300), (300,), True),  # long rows: the kernels' lane sums
    ((8, 9), (9,), False),
]
IDS = ["2d", "two dims", "long rows", "no weight"]


@pytest.fixture
def ops() -> Any:
    library = kernels.ops()
    if library is None:
        pytest.skip("normlab's CPU kernels are not built or are off (NORMLAB_KERNELS=0)")
    return library


def _weight(shape: tuple[int, ...], dtype: torch.dtype, given: bool) -> torch.Tensor | None:
    return (torch.rand(shape, dtype=dtype) + 0.5) if given else None


def _fwd_bwd(fn: Any, x: torch.Tensor, w: torch.Tensor | None, dy: torch.Tensor) -> list:
    x = x.detach().requires_grad_()
    inputs = [x] if w is None else [x, w.detach().requires_grad_()]
    y = fn(*inputs)
    return [y.detach(), *torch.autograd.grad(y, inputs, dy)]


def _close(mine: list, exact: list, terms: int, dtype: torch.dtype | None = None) -> None:
    for a, e in zip(mine, exact, strict=True):
        # sums of at most ``terms`` terms of the size of the largest value, in another order
        assert_close_sum(a, e, terms=terms, abs_sum=e.abs().max() + 1, dtype=dtype)


@pytest.mark.parametrize(("shape", "normalized", "weighted"), SHAPES, ids=IDS)
def test_equals_torch_and_the_closed_form_in_float64(ops, shape, normalized, weighted) -> None:
    x, dy = torch.randn(shape, dtype=F64) + 0.5, torch.randn(shape, dtype=F64)
    w = _weight(normalized, F64, weighted)
    mine = _fwd_bwd(lambda x, *w: ops.rms_norm(x, normalized, *w or [None], 1e-6), x, w, dy)
    exact = _fwd_bwd(lambda x, *w: F.rms_norm(x, normalized, *w or [None], 1e-6), x, w, dy)
    _close(mine, exact, x.numel())
    dx, dw, _ = rmsnorm.backward(dy, x, normalized, w, 1e-6)
    closed = [rmsnorm.forward(x, normalized, w, 1e-6), dx]
    if w is not None:
        closed.append(dw.reshape(w.shape))
    _close(mine, closed, x.numel())


@pytest.mark.parametrize(("shape", "normalized", "weighted"), SHAPES, ids=IDS)
def test_float32_is_within_the_rounding_bound_of_float64(ops, shape, normalized, weighted) -> None:
    x, dy = torch.randn(shape, dtype=F64) * 2 + 0.5, torch.randn(shape, dtype=F64)
    w = _weight(normalized, F64, weighted)
    x32, dy32 = x.float(), dy.float()
    w32 = None if w is None else w.float()
    mine = _fwd_bwd(lambda x, *w: ops.rms_norm(x, normalized, *w or [None], 1e-6), x32, w32, dy32)
    exact = _fwd_bwd(
        lambda x, *w: F.rms_norm(x, normalized, *w or [None], 1e-6),
        x32.double(), None if w32 is None else w32.double(), dy32.double(),
    )  # fmt: skip
    _close(mine, exact, x.numel(), dtype=torch.float32)


@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "no weight"])
def test_gradcheck_and_gradgradcheck(ops: Any, weighted: bool) -> None:
    x = torch.randn(4, 3, 5, dtype=F64, requires_grad=True)
    w = _weight((3, 5), F64, weighted)
    inputs = (x,) if w is None else (x, w.requires_grad_())

    def fn(x: torch.Tensor, *w: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, [3, 5], w[0] if w else None, 1e-5)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_the_weight_alone_gets_its_gradient(ops: Any) -> None:
    x = torch.randn(6, 4, dtype=F64)
    w = torch.rand(4, dtype=F64, requires_grad=True)
    (dw,) = torch.autograd.grad(ops.rms_norm(x, [4], w, 1e-5).pow(2).sum(), [w])
    (expected,) = torch.autograd.grad(F.rms_norm(x, [4], w, 1e-5).pow(2).sum(), [w])
    assert_close_sum(dw, expected, terms=x.numel(), abs_sum=expected.abs().max() + 1)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0)], ids=["no rows", "empty rows"])
def test_empty_input(ops: Any, shape: tuple[int, int]) -> None:
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    w = torch.rand(shape[1], dtype=F64, requires_grad=True)
    y = ops.rms_norm(x, [shape[1]], w, 1e-5)
    assert y.shape == x.shape
    dx, dw = torch.autograd.grad(y, [x, w], torch.ones_like(y))
    assert dx.shape == x.shape
    assert torch.equal(dw, torch.zeros_like(w))  # a sum over no rows


@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
def test_strided_inputs_and_gradients(ops: Any, layout: str) -> None:
    if layout == "transposed":
        x = torch.randn(5, 4, 6, dtype=F64).transpose(1, 2)  # (5, 6, 4), not contiguous
        dy = torch.randn(5, 4, 6, dtype=F64).transpose(1, 2)
    else:
        x = torch.randn(2, 3, 4, 5, dtype=F64).to(memory_format=torch.channels_last)
        dy = torch.randn(2, 3, 4, 5, dtype=F64).to(memory_format=torch.channels_last)
    normalized = tuple(x.shape[-2:]) if layout == "channels_last" else (x.shape[-1],)
    w = _weight(normalized, F64, True)
    mine = _fwd_bwd(lambda x, w: ops.rms_norm(x, normalized, w, 1e-5), x, w, dy)
    exact = _fwd_bwd(lambda x, w: F.rms_norm(x, normalized, w, 1e-5), x, w, dy)
    _close(mine, exact, x.numel())


def test_fake_tensors_and_compiled_fullgraph(ops: Any) -> None:
    with FakeTensorMode():
        x = torch.randn(8, 4, 5)
        assert ops.rms_norm(x, [4, 5], torch.ones(4, 5), 1e-5).shape == x.shape
    torch._dynamo.reset()

    def step(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, [5], w, 1e-5).sin().sum()

    x, w = torch.randn(8, 4, 5), torch.rand(5) + 0.5
    eager = _fwd_bwd(step, x, w, torch.tensor(1.0))
    traced = _fwd_bwd(torch.compile(step, fullgraph=True, backend="aot_eager"), x, w,
                      torch.tensor(1.0))  # fmt: skip
    for a, e in zip(traced, eager, strict=True):
        assert_close_sum(a, e, terms=x.numel(), abs_sum=e.abs().max() + 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda ops: ops.rms_norm(torch.ones(4, 3, dtype=torch.bfloat16), [3], None, 1e-5),
            "expected a float32 or float64 input, got BFloat16",
        ),
        (
            lambda ops: ops.rms_norm(torch.randn(2, 6, 3), [6], None, 1e-5),
            "normalized_shape \\[6\\] must be the trailing dims",
        ),
        (
            lambda ops: ops.rms_norm(torch.randn(2, 3), [3], torch.ones(3, dtype=F64), 1e-5),
            "weight must have the input's dtype Float",
        ),
        (
            lambda ops: ops.rms_norm(torch.randn(2, 3), [3], torch.ones(2), 1e-5),
            "expected weight of shape \\[3\\]",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error(ops: Any, call, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call(ops)


def test_the_public_function_runs_the_operator(ops: Any) -> None:
    x = torch.randn(4, 6, requires_grad=True)
    y = N.rms_norm(x, [6], torch.ones(6))
    assert "RMSNorm" in y.grad_fn.name()


def test_bfloat16_takes_the_tensor_code_within_its_rounding(ops: Any) -> None:
    """bfloat16 is not the operator's: the tensor path normalises it in float32."""
    module = nn.RMSNorm(64, dtype=torch.bfloat16)
    x = (torch.randn(16, 64) * 3 + 1).to(torch.bfloat16).requires_grad_()
    y = module(x)
    assert y.dtype == torch.bfloat16 and "RMSNorm" not in y.grad_fn.name()
    expected = F.rms_norm(x.double(), [64], module.weight.double(), module.eps)
    # float32 statistics of 64 terms, then one rounding to bfloat16 of the output
    assert_close_sum(y, expected, terms=64, abs_sum=expected.abs() + 1, dtype=torch.bfloat16)


def test_a_moved_dimension_runs_the_operator(ops: Any) -> None:
    """RMS norm over the channels of a map (``movedim(1, -1)``, not contiguous) takes the
    operator too; values and gradients as torch.nn's in float64."""
    x = torch.randn(2, 5, 3, 4, dtype=F64).movedim(1, -1)
    w, dy = torch.rand(5, dtype=F64) + 0.5, torch.randn(2, 3, 4, 5, dtype=F64)
    x_grad = x.detach().requires_grad_()
    assert "RMSNorm" in N.rms_norm(x_grad, [5], w).grad_fn.name()
    mine = _fwd_bwd(lambda x, w: N.rms_norm(x, [5], w), x, w, dy)
    exact = _fwd_bwd(lambda x, w: F.rms_norm(x, [5], w), x, w, dy)
    _close(mine, exact, x.numel())
