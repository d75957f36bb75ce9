"""normlab.kernels.triton.feature_norm: the CUDA layer- and group-norm kernels, run here on
CPU tensors by Triton's interpreter and compared with torch.nn in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from normlab.kernels.triton import feature_norm as tfn

pytestmark = pytest.mark.usefixtures("triton_on_cpu")  # tests/conftest.py


def _err(ours: torch.Tensor | None, oracle: torch.Tensor) -> float:
    assert ours is not None
    ours, oracle = ours.detach().double().reshape(oracle.shape), oracle.detach()
    return float((ours - oracle).abs().max() / max(1.0, float(oracle.abs().max())))


def _data(shape, params_shape, dtype, seed=0, mean=0.5, std=2.0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * std + mean).to(dtype)
    dy = torch.randn(shape, generator=g).to(dtype)
    w = (torch.rand(params_shape, generator=g) + 0.5).to(dtype)
    b = torch.randn(params_shape, generator=g).to(dtype)
    return x, dy, w, b


def _oracle(fn, x, dy, w, b):  # type: ignore[no-untyped-def]
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    out = fn(x64, w64, b64)
    return (out, *torch.autograd.grad(out, [x64, w64, b64], dy.double()))


TOL = {torch.float32: 2e-6, torch.float64: 1e-13}


@pytest.mark.parametrize(
    ("shape", "normalized"),
    [((4, 6, 5), (5,)), ((3, 4, 3, 3), (4, 3, 3)), ((2, 7), (7,)), ((3, 2, 1200), (1200,))],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_norm_equals_torch_nn(
    shape: tuple[int, ...], normalized: tuple[int, ...], dtype: torch.dtype
) -> None:
    x, dy, w, b = _data(shape, normalized, dtype)
    ref = _oracle(lambda x, w, b: F.layer_norm(x, normalized, w, b, 1e-5), x, dy, w, b)
    width = w.numel()
    out, stats = tfn.layer_norm_forward(x, w.reshape(-1), b.reshape(-1), width, 1e-5)
    dx, dw, db = tfn.layer_norm_backward(dy, x, stats, w.reshape(-1), True, True, True)
    assert out.dtype == dtype and stats.shape == (x.numel() // width, 2)
    for ours, oracle in zip((out, dx, dw, db), ref, strict=True):
        assert _err(ours, oracle) < TOL[dtype]


@pytest.mark.parametrize(
    ("shape", "groups"),
    [((4, 6, 5), 3), ((3, 4, 3, 3), 2), ((2, 6), 3), ((3, 64, 9, 9), 32), ((3, 5, 4, 4), 5)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_group_norm_equals_torch_nn(
    shape: tuple[int, ...], groups: int, dtype: torch.dtype
) -> None:
    x, dy, w, b = _data(shape, (shape[1],), dtype)
    ref = _oracle(lambda x, w, b: F.group_norm(x, groups, w, b, 1e-5), x, dy, w, b)
    out, stats = tfn.group_norm_forward(x, w, b, groups, 1e-5)
    dx, dw, db = tfn.group_norm_backward(dy, x, stats, w, groups, True, True, True)
    assert stats.shape == (shape[0] * groups, 2)
    for ours, oracle in zip((out, dx, dw, db), ref, strict=True):
        assert _err(ours, oracle) < TOL[dtype]


def test_only_the_gradients_asked_for() -> None:
    x, dy, w, b = _data((4, 6, 5), (6,), torch.float64)
    ref = _oracle(lambda x, w, b: F.group_norm(x, 3, w, b, 1e-5), x, dy, w, b)
    _, stats = tfn.group_norm_forward(x, w, b, 3, 1e-5)
    dx, dw, db = tfn.group_norm_backward(dy, x, stats, w, 3, True, False, False)
    assert dw is None and db is None and _err(dx, ref[1]) < 1e-13
    dx, dw, db = tfn.group_norm_backward(dy, x, stats, None, 3, False, False, True)
    assert dx is None and dw is None and _err(db, ref[3]) < 1e-13
    x, dy, w, b = _data((4, 6, 5), (5,), torch.float64)
    ref = _oracle(lambda x, w, b: F.layer_norm(x, (5,), w, b, 1e-5), x, dy, w, b)
    _, stats = tfn.layer_norm_forward(x, w, b, 5, 1e-5)
    dx, dw, db = tfn.layer_norm_backward(dy, x, stats, w, False, True, False)
    assert dx is None and db is None and _err(dw, ref[2]) < 1e-13


def test_far_from_zero_as_accurate_as_float64() -> None:
    """mean 1e4, std 1e-2 in float32: each row centred on its first value first."""
    x, dy, w, b = _data((6, 300), (300,), torch.float32, mean=1e4, std=1e-2)
    ref = _oracle(lambda x, w, b: F.layer_norm(x, (300,), w, b, 1e-5), x, dy, w, b)
    out, stats = tfn.layer_norm_forward(x, w, b, 300, 1e-5)
    dx, dw, _ = tfn.layer_norm_backward(dy, x, stats, w, True, True, True)
    assert _err(out, ref[0]) < 1e-5 and _err(dw, ref[2]) < 1e-5
    assert _err(dx, ref[1]) < 1e-3  # dx ~ 1/std = 100: relative to its size
    theirs = F.layer_norm(x, (300,), w, b, 1e-5)
    assert _err(theirs, ref[0]) > 1e-3  # torch.nn's float32 here, for scale


def test_bfloat16_input_keeps_float32_statistics() -> None:
    x, dy, w, b = _data((4, 8, 5, 5), (8,), torch.bfloat16)
    ref = _oracle(lambda x, w, b: F.group_norm(x, 4, w, b, 1e-5), x, dy, w, b)
    out, stats = tfn.group_norm_forward(x, w, b, 4, 1e-5)
    dx, dw, db = tfn.group_norm_backward(dy, x, stats, w, 4, True, True, True)
    assert out.dtype == torch.bfloat16 and stats.dtype == torch.float32
    assert _err(out, ref[0]) < 2e-2 and _err(dx, ref[1]) < 2e-2  # one rounding to bfloat16
    assert _err(dw, ref[2]) < 2e-2 and _err(db, ref[3]) < 2e-2


def test_the_modules_train_through_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    import normlab.nn
    from normlab.kernels import triton as gpu

    calls: list[str] = []
    for name in ("layer_norm_forward", "layer_norm_backward",
                 "group_norm_forward", "group_norm_backward"):  # fmt: skip
        original = getattr(gpu, name)
        monkeypatch.setattr(gpu, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    x = torch.randn(4, 6, 5, requires_grad=True)
    r = torch.randn(4, 6, 5)  # loss sum(y * r): every gradient depends on the layer
    for ours, theirs in [
        (normlab.nn.LayerNorm([6, 5]), torch.nn.LayerNorm([6, 5])),
        (normlab.nn.GroupNorm(3, 6), torch.nn.GroupNorm(3, 6)),
    ]:
        grads = torch.autograd.grad((ours(x) * r).sum(), [x, ours.weight])
        expected = torch.autograd.grad((theirs(x) * r).sum(), [x, theirs.weight])
        for got, want in zip(grads, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert calls == ["layer_norm_forward", "layer_norm_backward",
                     "group_norm_forward", "group_norm_backward"]  # fmt: skip
