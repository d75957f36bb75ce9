"""normlab.kernels.triton.operators: the Triton kernels as implementations of the C++
autograd operators (``batch_norm_train``, ``layer_norm``, ``group_norm``).

On a GPU they are registered for CUDA. Here a fresh interpreter registers them for the CPU
instead (replacing the C++ loops), runs through Triton's interpreter, and saves what the
operators returned, forward and backward through their C++ autograd and below autograd
(``torch.inference_mode``); the test compares that with ``torch.nn.functional`` in float64,
within the rounding bounds of the sums involved.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from normlab import kernels
from normlab.testing.tolerance import assert_close_sum, normalization_sums

EPS = 1e-5

# Runs in its own interpreter: a registration for the CPU key replaces the C++ kernels
# for the whole process. Saves the inputs and what the operators gave.
_SCRIPT = r"""
import sys, torch
from normlab import kernels
assert kernels.run_triton_on_cpu()
ops = kernels.ops()
assert ops is not None, "normlab's CPU kernels are not built"
from normlab.kernels.triton import operators
called = set()

def recorded(name, implementation):
    def call(*args):
        called.add(name)
        return implementation(*args)
    return call

for name, implementation in list(operators.IMPLEMENTATIONS.items()):
    operators.IMPLEMENTATIONS[name] = recorded(name, implementation)
library = operators.register("CPU")
g = torch.Generator().manual_seed(0)

def leaf(*shape, dtype=torch.float32, scale=1.0, shift=0.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

saved = {}
for dtype in (torch.float32, torch.float64):
    name = str(dtype).split(".")[1]
    # batch norm: running statistics, the batch counted, momentum None (cumulative average)
    x = leaf(6, 3, 4, 5, dtype=dtype, scale=2.0, shift=0.5).requires_grad_()
    w, b = leaf(3, dtype=dtype).requires_grad_(), leaf(3, dtype=dtype).requires_grad_()
    rm, rv = leaf(3, dtype=dtype), leaf(3, dtype=dtype).abs()
    tracked = torch.tensor(3)
    dy = leaf(6, 3, 4, 5, dtype=dtype)
    inputs = (x.detach().clone(), w.detach().clone(), b.detach().clone(), rm.clone(), rv.clone())
    out = ops.batch_norm_train(x, w, b, rm, rv, None, 1e-5, tracked)
    out.backward(dy)
    saved[f"batch/{name}"] = (inputs, dy, out.detach(), x.grad, w.grad, b.grad, rm, rv, tracked)
    # layer norm over two trailing dims (the parameters' gradients take their shape)
    x = leaf(4, 3, 5, 8, dtype=dtype).requires_grad_()
    w, b = leaf(5, 8, dtype=dtype).requires_grad_(), leaf(5, 8, dtype=dtype).requires_grad_()
    dy = leaf(4, 3, 5, 8, dtype=dtype)
    inputs = (x.detach().clone(), w.detach().clone(), b.detach().clone())
    out = ops.layer_norm(x, [5, 8], w, b, 1e-5)
    out.backward(dy)
    saved[f"layer/{name}"] = (inputs, dy, out.detach(), x.grad, w.grad, b.grad)
    # group norm, weight without bias
    x = leaf(4, 6, 7, dtype=dtype, shift=3.0).requires_grad_()
    w = leaf(6, dtype=dtype).requires_grad_()
    dy = leaf(4, 6, 7, dtype=dtype)
    inputs = (x.detach().clone(), w.detach().clone())
    out = ops.group_norm(x, 3, w, None, 1e-5)
    out.backward(dy)
    saved[f"group/{name}"] = (inputs, dy, out.detach(), x.grad, w.grad)
    # below autograd: the forward kernels alone
    with torch.inference_mode():
        x, rm, rv = leaf(5, 4, dtype=dtype), torch.zeros(4, dtype=dtype), torch.ones(4, dtype=dtype)
        out = ops.batch_norm_train(x, None, None, rm, rv, 0.1, 1e-5, None)
        saved[f"batch-inference/{name}"] = (x, out, rm, rv)
        x = leaf(3, 10, dtype=dtype)
        saved[f"layer-inference/{name}"] = (x, ops.layer_norm(x, [10], None, None, 1e-5))
        x = leaf(3, 4, 5, dtype=dtype)
        saved[f"group-inference/{name}"] = (x, ops.group_norm(x, 2, None, None, 1e-5))
saved["called"] = sorted(called)
torch.save(saved, sys.argv[1])
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if kernels.ops() is None:
        pytest.skip("normlab's CPU kernels are not built or are off (NORMLAB_KERNELS=0)")
    path = tmp_path_factory.mktemp("operators") / "saved.pt"
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(Path(path))


def _grads(out: torch.Tensor, wrt: list[torch.Tensor], dy: torch.Tensor) -> tuple:
    return torch.autograd.grad(out, wrt, dy.double())


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.double().requires_grad_() for t in tensors]


DTYPES = ["float32", "float64"]


def test_every_registered_kernel_ran(results: dict) -> None:
    from normlab.kernels.triton import operators

    assert results["called"] == sorted(operators.IMPLEMENTATIONS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_train_runs_the_triton_kernels_under_the_cpp_autograd(
    results: dict, dtype: str
) -> None:
    inputs, dy, out, dx, dw, db, rm, rv, tracked = results[f"batch/{dtype}"]
    x, w, b, rm0, rv0 = inputs
    x64, w64, b64 = _leaves(x, w, b)
    rm64, rv64 = rm0.double(), rv0.double()
    momentum = 1 / 4  # the cumulative average after counting the fourth batch
    ref = F.batch_norm(x64, rm64, rv64, w64, b64, True, momentum, EPS)
    ref_dx, ref_dw, ref_db = _grads(ref, [x64, w64, b64], dy)
    assert int(tracked) == 4
    c = x.shape[1]

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(0, 1).reshape(c, -1)

    n = x.numel() // c
    sums = normalization_sums(rows(x), rows(dy), EPS, weight=w.reshape(-1, 1))
    output_sum = sums.output + b.abs().double().reshape(-1, 1)
    assert_close_sum(rows(out), rows(ref), terms=n, abs_sum=output_sum, dtype=x.dtype)
    assert_close_sum(rows(dx), rows(ref_dx), terms=n, abs_sum=sums.grad_input, dtype=x.dtype)
    unweighted = normalization_sums(rows(x), rows(dy), EPS)
    assert_close_sum(dw, ref_dw, terms=n, abs_sum=unweighted.weight_terms.sum(1), dtype=x.dtype)
    assert_close_sum(db, ref_db, terms=n, abs_sum=rows(dy).abs().sum(1).double(), dtype=x.dtype)
    scale = rows(x).abs().sum(1).double() / n + rm0.abs().double()
    assert_close_sum(rm, rm64, terms=n, abs_sum=scale, dtype=x.dtype)
    spread = rows(x).double().square().sum(1) / (n - 1) + rv0.abs().double()
    assert_close_sum(rv, rv64, terms=n, abs_sum=spread, dtype=x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_runs_the_triton_kernels_under_the_cpp_autograd(
    results: dict, dtype: str
) -> None:
    inputs, dy, out, dx, dw, db = results[f"layer/{dtype}"]
    x, w, b = inputs
    x64, w64, b64 = _leaves(x, w, b)
    ref = F.layer_norm(x64, [5, 8], w64, b64, EPS)
    ref_dx, ref_dw, ref_db = _grads(ref, [x64, w64, b64], dy)
    assert dw.shape == w.shape and db.shape == b.shape
    rows, rows_dy = x.reshape(-1, 40), (dy * w).reshape(-1, 40)
    sums = normalization_sums(rows, rows_dy, EPS)
    assert_close_sum(out.reshape(-1, 40), ref.reshape(-1, 40), terms=40,
                     abs_sum=sums.output * w.abs().reshape(1, -1).double() + b.abs().reshape(1, -1),
                     dtype=x.dtype)  # fmt: skip
    assert_close_sum(dx.reshape(-1, 40), ref_dx.reshape(-1, 40), terms=40,
                     abs_sum=sums.grad_input, dtype=x.dtype)  # fmt: skip
    m = rows.shape[0]
    weight_terms = normalization_sums(rows, dy.reshape(-1, 40), EPS).weight_terms.sum(0)
    assert_close_sum(dw.reshape(-1), ref_dw.reshape(-1), terms=m, abs_sum=weight_terms,
                     dtype=x.dtype)  # fmt: skip
    assert_close_sum(db.reshape(-1), ref_db.reshape(-1), terms=m,
                     abs_sum=dy.reshape(-1, 40).abs().sum(0).double(), dtype=x.dtype)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_runs_the_triton_kernels_under_the_cpp_autograd(
    results: dict, dtype: str
) -> None:
    inputs, dy, out, dx, dw = results[f"group/{dtype}"]
    x, w = inputs
    x64, w64 = _leaves(x, w)
    ref = F.group_norm(x64, 3, w64, None, EPS)
    ref_dx, ref_dw = _grads(ref, [x64, w64], dy)
    rows = x.reshape(4 * 3, -1)
    rows_dy = (dy * w.reshape(1, -1, 1)).reshape(4 * 3, -1)
    w_rows = w.reshape(1, -1, 1).expand_as(x).reshape(4 * 3, -1)
    sums = normalization_sums(rows, rows_dy, EPS)
    n = rows.shape[1]
    assert_close_sum(out.reshape(12, -1), ref.reshape(12, -1), terms=n,
                     abs_sum=sums.output * w_rows.abs().double(), dtype=x.dtype)  # fmt: skip
    assert_close_sum(dx.reshape(12, -1), ref_dx.reshape(12, -1), terms=n,
                     abs_sum=sums.grad_input, dtype=x.dtype)  # fmt: skip
    terms = normalization_sums(rows, dy.reshape(12, -1), EPS).weight_terms
    per_channel = terms.reshape(4, 6, -1).sum((0, 2))
    assert_close_sum(dw, ref_dw, terms=4 * 7, abs_sum=per_channel, dtype=x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_below_autograd_the_operators_are_the_forward_kernels(results: dict, dtype: str) -> None:
    x, out, rm, rv = results[f"batch-inference/{dtype}"]
    ref_rm, ref_rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    ref = F.batch_norm(x.double(), ref_rm, ref_rv, None, None, True, 0.1, EPS)
    sums = normalization_sums(x.t(), torch.zeros_like(x.t()), EPS)
    assert_close_sum(out.t(), ref.t(), terms=5, abs_sum=sums.output, dtype=x.dtype)
    assert_close_sum(rm, ref_rm, terms=5, abs_sum=x.abs().sum(0).double(), dtype=x.dtype)
    assert_close_sum(rv, ref_rv, terms=5, abs_sum=1 + x.square().sum(0).double(), dtype=x.dtype)
    for name, reference, shape in (
        ("layer", lambda t: F.layer_norm(t, [10], eps=EPS), (3, 10)),
        ("group", lambda t: F.group_norm(t, 2, eps=EPS), (6, 10)),
    ):
        x, out = results[f"{name}-inference/{dtype}"]
        rows = x.reshape(shape)
        sums = normalization_sums(rows, torch.zeros_like(rows), EPS)
        expected = reference(x.double()).reshape(shape)
        assert_close_sum(out.reshape(shape), expected, terms=10, abs_sum=sums.output,
                         dtype=x.dtype)  # fmt: skip


def test_operators_apply_on_the_cpu_as_the_kernels_do() -> None:
    x = torch.randn(4, 3, 5)
    assert kernels.operators_apply(x, torch.ones(3)) == kernels.applies(x, torch.ones(3))
    assert not kernels.operators_apply(torch.empty(4, 3, 5, device="meta"))
    assert not kernels.operators_apply(x.transpose(0, 2))
