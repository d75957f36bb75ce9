"""normlab's Triton kernels against torch.nn (float64) on a real GPU: batch norm on shapes
that take the one-launch and the split paths, layer and group norm; run by
tools/gpu-bench.sh. Exit 1 on a mismatch."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from normlab import kernels
from normlab.kernels import triton as gpu
from normlab.kernels.triton import batch_norm as tbn
from normlab.nn.registry import default_num_groups

BN_SHAPES = [(2, 3, 5, 5), (64, 6, 24, 24), (64, 120), (4096, 120), (128, 64, 32, 32),
             (32, 256, 14, 14), (3, 5, 7, 9, 11)]  # fmt: skip
ROW_SHAPES = [(64, 6, 24, 24), (64, 120), (128, 64, 32, 32), (32, 256, 14, 14)]
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2}


def error(ours: torch.Tensor, oracle: torch.Tensor) -> float:
    ours, oracle = ours.detach().double().reshape(oracle.shape), oracle.detach()
    return float((ours - oracle).abs().max() / max(1.0, float(oracle.abs().max())))


def report(name: str, shape: tuple[int, ...], dtype: torch.dtype, errors: list[float]) -> bool:
    ok = max(errors) <= TOLERANCE[dtype]
    print(f"{'ok  ' if ok else 'FAIL'} {name:<10} {'x'.join(map(str, shape)):>14} "
          f"{str(dtype)[6:]:>8}  " + " ".join(f"{e:.1e}" for e in errors))  # fmt: skip
    return ok


def oracle(fn: Callable[..., torch.Tensor], x, dy, *params):  # type: ignore[no-untyped-def]
    x64 = x.double().requires_grad_()
    p64 = [p.double().requires_grad_() for p in params]
    out = fn(x64, *p64)
    return out, torch.autograd.grad(out, [x64, *p64], dy.double())


def check_batch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> bool:
    c = shape[1]
    param = torch.float64 if dtype == torch.float64 else torch.float32
    x = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape, device=device).to(dtype)
    w = (torch.rand(c, device=device) + 0.5).to(param)
    b = torch.randn(c, device=device).to(param)
    rm, rv = torch.randn(c, device=device).to(param), (torch.rand(c, device=device) + 0.5).to(param)
    rm64, rv64 = rm.double().clone(), rv.double().clone()
    ref, ref_grads = oracle(
        lambda x, w, b: F.batch_norm(x, rm64, rv64, w, b, True, 0.1, 1e-5), x, dy, w, b
    )
    out, offset, invstd = gpu.batch_norm_forward(x, w, b, rm, rv, 0.1, 1e-5)
    grads = gpu.batch_norm_backward(dy, x, offset, invstd, w)
    errors = [error(out, ref), error(rm, rm64), error(rv, rv64)]
    errors += [error(g, r) for g, r in zip(grads, ref_grads, strict=True)]
    plan = tbn.plan(tuple(shape), dtype, device)
    return report(f"batch {'1' if plan.one_launch else plan.splits}", shape, dtype, errors)


def check_rows(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> bool:
    c = shape[1]
    groups = default_num_groups(c)
    param = torch.float64 if dtype == torch.float64 else dtype
    x = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape, device=device).to(dtype)
    ok = True
    features = shape[1:]
    w = (torch.rand(features, device=device) + 0.5).to(param)
    b = torch.randn(features, device=device).to(param)
    ref, ref_grads = oracle(lambda x, w, b: F.layer_norm(x, features, w, b, 1e-5), x, dy, w, b)
    width = w.numel()
    out, stats = gpu.layer_norm_forward(x, w.reshape(-1), b.reshape(-1), width, 1e-5)
    grads = gpu.layer_norm_backward(dy, x, stats, w.reshape(-1), True, True, True)
    errors = [error(out, ref)] + [error(g, r) for g, r in zip(grads, ref_grads, strict=True)]
    ok &= report("layer", shape, dtype, errors)
    w, b = (torch.rand(c, device=device) + 0.5).to(param), torch.randn(c, device=device).to(param)
    ref, ref_grads = oracle(lambda x, w, b: F.group_norm(x, groups, w, b, 1e-5), x, dy, w, b)
    out, stats = gpu.group_norm_forward(x, w, b, groups, 1e-5)
    grads = gpu.group_norm_backward(dy, x, stats, w, groups, True, True, True)
    errors = [error(out, ref)] + [error(g, r) for g, r in zip(grads, ref_grads, strict=True)]
    return report(f"group {groups}", shape, dtype, errors) and ok


def main() -> int:
    device = torch.device("cuda")
    assert kernels.triton_ops() is gpu, "Triton kernels not available"
    ok = True
    # the first round compiles through Triton's launch; the second, on fresh data, takes
    # the compiled kernels' own launchers (triton_common.launch)
    for path in ("Triton's launch", "direct launch"):
        print(f"-- {path}")
        for dtype in TOLERANCE:
            for shape in BN_SHAPES:
                ok &= check_batch(shape, dtype, device)
            for shape in ROW_SHAPES:
                ok &= check_rows(shape, dtype, device)
    x = 1e4 + 1e-2 * torch.randn(64, 16, 8, 8, device=device)
    ones, zeros = torch.ones(16, device=device), torch.zeros(16, device=device)
    ref = F.batch_norm(x.double(), None, None, ones.double(), zeros.double(), True, 0.1, 1e-5)
    ours = gpu.batch_norm_forward(x, ones, zeros, None, None, 0.1, 1e-5)[0]
    theirs = F.batch_norm(x, None, None, ones, zeros, True, 0.1, 1e-5)
    print(f"far from zero (mean 1e4, std 1e-2, float32): batch norm output error normlab "
          f"{error(ours, ref):.1e}, torch.nn {error(theirs, ref):.1e}")  # fmt: skip
    print("all ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
