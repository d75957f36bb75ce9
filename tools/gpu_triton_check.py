"""The Triton batch-norm kernels against torch.nn (float64) on a real GPU, on shapes that
take the one-launch and the split paths; run by tools/gpu-bench.sh. Exit 1 on a mismatch."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from normlab import kernels
from normlab.kernels import triton_batch_norm as tbn

SHAPES = [(2, 3, 5, 5), (64, 6, 24, 24), (64, 120), (4096, 120), (128, 64, 32, 32),
          (32, 256, 14, 14), (3, 5, 7, 9, 11)]  # fmt: skip
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2}


def error(ours: torch.Tensor, oracle: torch.Tensor) -> float:
    ours, oracle = ours.detach().double(), oracle.detach()
    return float((ours - oracle).abs().max() / max(1.0, float(oracle.abs().max())))


def main() -> int:
    device = torch.device("cuda")
    assert kernels.triton_ops() is tbn, "Triton kernels not available"
    worst = 0.0
    failed = False
    for shape in SHAPES:
        for dtype in TOLERANCE:
            c = shape[1]
            x = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype)
            dy = torch.randn(shape, device=device).to(dtype)
            w, b = torch.rand(c, device=device) + 0.5, torch.randn(c, device=device)
            rm, rv = torch.randn(c, device=device), torch.rand(c, device=device) + 0.5
            if dtype == torch.float64:
                w, b, rm, rv = w.double(), b.double(), rm.double(), rv.double()
            x64 = x.double().requires_grad_()
            w64, b64 = w.double().requires_grad_(), b.double().requires_grad_()
            rm64, rv64 = rm.double(), rv.double()
            ref = F.batch_norm(x64, rm64, rv64, w64, b64, True, 0.1, 1e-5)
            ref_grads = torch.autograd.grad(ref, [x64, w64, b64], dy.double())
            out, offset, invstd = tbn.batch_norm_forward(x, w, b, rm, rv, 0.1, 1e-5)
            grads = tbn.batch_norm_backward(dy, x, offset, invstd, w)
            errors = [error(out, ref), error(rm, rm64), error(rv, rv64)]
            errors += [error(g, r) for g, r in zip(grads, ref_grads, strict=True)]
            plan = tbn.plan(tuple(shape), device)
            ok = max(errors) <= TOLERANCE[dtype]
            failed |= not ok
            worst = max(worst, max(errors)) if dtype == torch.float32 else worst
            print(f"{'ok  ' if ok else 'FAIL'} {'x'.join(map(str, shape)):>14} {str(dtype)[6:]:>8} "
                  f"grid {plan.grid} {'one launch' if plan.one_launch else 'split':>10}  "
                  + " ".join(f"{e:.1e}" for e in errors))
    x = 1e4 + 1e-2 * torch.randn(64, 16, 8, 8, device=device)
    ones, zeros = torch.ones(16, device=device), torch.zeros(16, device=device)
    ref = F.batch_norm(x.double(), None, None, ones.double(), zeros.double(), True, 0.1, 1e-5)
    ours = tbn.batch_norm_forward(x, ones, zeros, None, None, 0.1, 1e-5)[0]
    theirs = F.batch_norm(x, None, None, ones, zeros, True, 0.1, 1e-5)
    print(f"far from zero (mean 1e4, std 1e-2, float32): output error normlab "
          f"{error(ours, ref):.1e}, torch.nn {error(theirs, ref):.1e}")
    print(f"worst float32 error {worst:.1e}; {'FAILED' if failed else 'all ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
