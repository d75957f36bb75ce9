"""normlab.kernels.triton.batch_norm: the CUDA batch-norm kernels, run here on CPU tensors
by Triton's interpreter and compared with torch.nn's batch norm in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from normlab import kernels
from normlab.kernels.triton import batch_norm as tbn
from normlab.kernels.triton.common import halves

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("triton_on_cpu")  # tests/conftest.py


@pytest.fixture(params=["one launch", "split"])
def launches(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The one-launch path (small inputs) and the split path (large ones) on small tensors."""
    if request.param == "split":
        monkeypatch.setattr(tbn, "ONE_PROGRAM_LIMIT", 0)
        monkeypatch.setattr(tbn, "MIN_WORK", 1)
        monkeypatch.setattr(tbn, "TILE", 8)  # tiles of 8 values: several per split
    tbn.plan.cache_clear()
    yield request.param
    tbn.plan.cache_clear()


def _oracle(x, weight, bias, running_mean, running_var, dy, momentum=0.1, eps=1e-5):  # type: ignore[no-untyped-def]
    """torch.nn's batch norm in float64: output, running stats, dx, dweight, dbias."""
    x64 = x.double().requires_grad_()
    w64 = None if weight is None else weight.double().requires_grad_()
    b64 = None if bias is None else bias.double().requires_grad_()
    rm = None if running_mean is None else running_mean.double().clone()
    rv = None if running_var is None else running_var.double().clone()
    out = F.batch_norm(x64, rm, rv, w64, b64, True, momentum, eps)
    wrt = [t for t in (x64, w64, b64) if t is not None]
    grads = torch.autograd.grad(out, wrt, dy.double())
    return out, rm, rv, grads


def _err(ours: torch.Tensor, oracle: torch.Tensor) -> float:
    ours, oracle = ours.detach().double(), oracle.detach()
    return float((ours - oracle).abs().max() / max(1.0, float(oracle.abs().max())))


@pytest.mark.parametrize("shape", [(5, 3, 4), (2, 3, 3, 3), (7, 5), (3, 4, 2, 2, 3), (9, 2, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_equal_torch_nn(
    shape: tuple[int, ...], dtype: torch.dtype, launches: str
) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    c = shape[1]
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype)
    weight = (torch.rand(c, generator=g) + 0.5).to(dtype)
    bias = torch.randn(c, generator=g).to(dtype)
    running_mean, running_var = torch.randn(c, generator=g).to(dtype), torch.rand(c).to(dtype)
    dy = torch.randn(shape, generator=g).to(dtype)
    ref_out, ref_rm, ref_rv, (ref_dx, ref_dw, ref_db) = _oracle(
        x, weight, bias, running_mean, running_var, dy
    )
    out, offset, invstd = tbn.batch_norm_forward(
        x, weight, bias, running_mean, running_var, 0.1, 1e-5
    )
    dx, dw, db = tbn.batch_norm_backward(dy, x, offset, invstd, weight)
    tol = 2e-6 if dtype == torch.float32 else 1e-13
    assert out.dtype == dtype and dx.dtype == dtype
    for ours, oracle in [(out, ref_out), (running_mean, ref_rm), (running_var, ref_rv),
                         (dx, ref_dx), (dw, ref_dw), (db, ref_db)]:  # fmt: skip
        assert _err(ours, oracle) < tol
    # what is saved: the mean minus each channel's first value, and 1/sqrt(var + eps)
    x64 = x.double().transpose(0, 1).reshape(c, -1)
    assert _err(offset, x64.mean(1) - x64[:, 0]) < tol
    assert _err(invstd, (x64.var(1, unbiased=False) + 1e-5).rsqrt()) < tol


def test_without_affine_parameters_or_running_stats(launches: str) -> None:
    x, dy = torch.randn(6, 4, 3), torch.randn(6, 4, 3)
    ref_out, _, _, (ref_dx,) = _oracle(x, None, None, None, None, dy)
    out, offset, invstd = tbn.batch_norm_forward(x, None, None, None, None, 0.1, 1e-5)
    dx, _, _ = tbn.batch_norm_backward(dy, x, offset, invstd, None)
    assert _err(out, ref_out) < 2e-6 and _err(dx, ref_dx) < 2e-6


def test_far_from_zero_as_accurate_as_float64(launches: str) -> None:
    """mean 1e4, std 1e-2 in float32: centring on each channel's first value keeps the
    sums small (torch.nn's float32 output is off by ~1e-2 here)."""
    g = torch.Generator().manual_seed(0)
    x = 1e4 + 1e-2 * torch.randn(8, 3, 6, 6, generator=g)
    dy = torch.randn(8, 3, 6, 6, generator=g)
    w, b = torch.ones(3), torch.zeros(3)
    ref_out, _, _, (ref_dx, ref_dw, _) = _oracle(x, w, b, None, None, dy)
    out, offset, invstd = tbn.batch_norm_forward(x, w, b, None, None, 0.1, 1e-5)
    dx, dw, _ = tbn.batch_norm_backward(dy, x, offset, invstd, w)
    assert _err(out, ref_out) < 1e-5
    assert _err(dx, ref_dx) < 1e-3  # dx ~ 1/std = 100: relative to its size
    assert _err(dw, ref_dw) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_keeps_float32_statistics(dtype: torch.dtype, launches: str) -> None:
    x, dy = torch.randn(4, 3, 5, 5).to(dtype), torch.randn(4, 3, 5, 5).to(dtype)
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    rm, rv = torch.zeros(3), torch.ones(3)
    ref_out, ref_rm, ref_rv, (ref_dx, ref_dw, _) = _oracle(x, w, b, rm, rv, dy)
    out, offset, invstd = tbn.batch_norm_forward(x, w, b, rm, rv, 0.1, 1e-5)
    dx, dw, _ = tbn.batch_norm_backward(dy, x, offset, invstd, w)
    assert out.dtype == dtype and dx.dtype == dtype and invstd.dtype == torch.float32
    assert _err(out, ref_out) < 1e-2 and _err(dx, ref_dx) < 1e-2  # one rounding to dtype
    assert _err(rm, ref_rm) < 1e-6 and _err(rv, ref_rv) < 1e-6 and _err(dw, ref_dw) < 1e-5


def test_ops_for_picks_the_triton_kernels_where_they_apply() -> None:
    x = torch.randn(4, 3, 5)
    assert kernels.ops_for(x, torch.ones(3)) is kernels.triton_ops()
    assert kernels.ops_for(x.transpose(0, 2)) is None  # not contiguous: tensor code
    assert kernels.ops_for(x.long()) is None
    kernels.set_enabled(False, gpu=False)
    assert kernels.triton_ops() is None and kernels.ops_for(x) is None  # turned off
    kernels.set_enabled(False, gpu=True)
    kernels.run_triton_on_cpu(False)
    assert kernels.ops_for(x) is None  # CPU tensors only under the interpreter


def test_the_batch_norm_module_trains_through_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    import normlab.nn
    from normlab.kernels import triton as gpu

    calls: list[str] = []
    for name in ("batch_norm_forward", "batch_norm_backward"):
        original = getattr(gpu, name)
        monkeypatch.setattr(gpu, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    ours, theirs = normlab.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    r = torch.randn(4, 3, 5, 5)  # loss sum(y * r): every gradient depends on the layer
    grads = torch.autograd.grad((ours(x) * r).sum(), [x, ours.weight, ours.bias])
    expected = torch.autograd.grad((theirs(x) * r).sum(), [x, theirs.weight, theirs.bias])
    assert calls == ["batch_norm_forward", "batch_norm_backward"]
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours.running_var, theirs.running_var, atol=1e-7)


def test_plans_cut_large_inputs_into_many_programs_and_small_ones_into_one_launch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tbn, "programs", lambda device, per_sm: per_sm * 132)  # an H200's
    tbn.plan.cache_clear()
    f32 = torch.float32
    lenet = tbn.plan((64, 16, 8, 8), f32, CPU)  # 4096 values a channel: two tiles each
    assert lenet.one_launch and lenet.grid == (16, 1) and lenet.block_k == tbn.TILE == 2048
    resnet = tbn.plan((32, 256, 14, 14), f32, CPU)  # 6272 values: one launch, 256 programs
    assert resnet.one_launch and resnet.grid == (256, 1) and resnet.block_c == 1
    wide = tbn.plan((64, 6, 24, 24), f32, CPU)  # 36864 values a channel, 6 channels: split
    assert wide.grid == (6, 9) and wide.chunk == 4096
    big = tbn.plan((128, 256, 56, 56), f32, CPU)
    assert not big.one_launch and big.block_k == tbn.TILE and big.chunk % big.block_k == 0
    assert big.chunk * big.splits >= big.values > big.chunk * (big.splits - 1)  # none empty
    assert big.grid == (256, 9) and big.chunk == 45056  # 16 programs per SM at the most
    assert tbn.plan((128, 256, 56, 56), torch.float64, CPU).block_k == tbn.TILE // 2
    flat = tbn.plan((4096, 120), f32, CPU)  # (N, C): channels along the contiguous dimension
    assert flat.length == 1 and flat.block_c == tbn.CONTIGUOUS and flat.grid[0] == 4
    assert flat.block_c * flat.block_k == tbn.TILE and flat.grid[1] > 1
    tbn.plan.cache_clear()


@pytest.mark.parametrize("value", [0.1, 1e-5, 0.3, 123456789.0, 2.0**40 + 1])
def test_scalars_travel_as_two_float32_halves_with_float64_precision(value: float) -> None:
    hi, lo = halves(value)
    assert torch.tensor(hi, dtype=torch.float32).item() == hi  # a float32 each
    assert torch.tensor(lo, dtype=torch.float32).item() == pytest.approx(lo, rel=1e-7)
    joined = float(torch.tensor(hi, dtype=torch.float64) + torch.tensor(lo, dtype=torch.float32))
    assert joined == pytest.approx(value, rel=1e-14)
