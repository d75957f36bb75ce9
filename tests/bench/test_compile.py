"""``torch.compile(layer, fullgraph=True)`` works forward and backward for every normlab.nn layer.

``fullgraph=True`` turns any graph break into an error, so these tests prove that dynamo
traces each layer (including the closed-form autograd ``Function`` of batch norm) in one
graph. The ``aot_eager`` backend runs the traced forward and backward graphs through
AOTAutograd without generating code, which keeps the test fast; one inductor test (the
C++ code generator, what users get by default) covers BatchNorm2d.
"""

from __future__ import annotations

import pytest
import torch
import torch._inductor.config
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import normlab.nn as nl

# (class name, constructor arguments, input shape): every layer of normlab.nn.
LAYERS = [
    ("BatchNorm1d", (5,), (4, 5)),
    ("BatchNorm1d", (5,), (4, 5, 3)),
    ("BatchNorm2d", (3,), (4, 3, 5, 5)),
    ("BatchNorm3d", (3,), (2, 3, 3, 4, 4)),
    ("InstanceNorm1d", (3,), (2, 3, 7)),
    ("InstanceNorm2d", (3,), (2, 3, 5, 5)),
    ("InstanceNorm3d", (3,), (2, 3, 3, 4, 4)),
    ("LayerNorm", ([5, 6],), (3, 4, 5, 6)),
    ("GroupNorm", (2, 4), (3, 4, 5, 5)),
    ("RMSNorm", (6,), (3, 4, 6)),
    ("LocalResponseNorm", (3,), (2, 6, 5, 5)),
    ("SyncBatchNorm", (3,), (4, 3, 5, 5)),  # one process, no process group: local statistics
    ("FrozenBatchNorm2d", (3,), (4, 3, 5, 5)),
    ("BatchRenorm1d", (5,), (4, 5)),
    ("BatchRenorm2d", (3,), (4, 3, 5, 5)),
    ("BatchRenorm3d", (3,), (2, 3, 3, 4, 4)),
    ("GhostBatchNorm1d", (5, 2), (4, 5)),
    ("GhostBatchNorm2d", (3, 2), (4, 3, 5, 5)),
    ("FilterResponseNorm2d", (3,), (4, 3, 5, 5)),
    ("EvoNorm2dB0", (4,), (4, 4, 5, 5)),
    ("EvoNorm2dS0", (4, 2), (4, 4, 5, 5)),
    ("DynamicTanh", (6,), (3, 4, 6)),
    ("StdConv2d", (3, 3, 3, 1, 1), (2, 3, 6, 6)),  # 3x3, stride 1, padding 1: same shape
]
# not modules of their own: a lazy layer becomes its twin above on its first call; the
# result type of recompute_batch_norm_stats
NOT_LAYERS = {
    "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d",
    "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d", "RecomputedStats",
}  # fmt: skip


def _values(case: object) -> tuple:
    """A case's (name, args, shape), whether plain or a ``pytest.param``."""
    return case.values if hasattr(case, "values") else case  # type: ignore[attr-defined]


AFFINE_FOR_INSTANCE = {"affine": True, "track_running_stats": True}


def _build(name: str, args: tuple, lib: object) -> nn.Module:
    kwargs = AFFINE_FOR_INSTANCE if name.startswith("InstanceNorm") else {}
    return getattr(lib, name)(*args, **kwargs)


def _fwd_bwd(module: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> list[torch.Tensor]:
    out = module(x)
    grads = torch.autograd.grad(out, [x, *module.parameters()], dy)
    return [out, *grads]


def test_every_layer_is_covered() -> None:
    classes = {name for name in nl.__all__ if name[0].isupper()} - NOT_LAYERS
    names = {_values(case)[0] for case in LAYERS}
    assert names == classes


@pytest.mark.parametrize(
    ("name", "args", "shape"), LAYERS, ids=[f"{c[0]}-{len(c[2])}d" for c in map(_values, LAYERS)]
)
def test_fullgraph_compile_matches_eager_forward_and_backward(
    name: str, args: tuple, shape: tuple[int, ...]
) -> None:
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_()
    dy = torch.randn(shape, generator=generator, dtype=torch.float64)
    eager = _build(name, args, nl).double().train()
    traced = _build(name, args, nl).double().train()
    traced.load_state_dict(eager.state_dict())
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(traced, fullgraph=True, backend=counter)
    for mode in ("train", "eval"):  # two steps in training, then evaluation
        for _ in range(2 if mode == "train" else 1):
            eager.train(mode == "train")
            traced.train(mode == "train")
            for got, want in zip(_fwd_bwd(compiled, x, dy), _fwd_bwd(eager, x, dy), strict=True):
                torch.testing.assert_close(got, want)
    for key, want in eager.state_dict().items():  # running statistics moved alike
        torch.testing.assert_close(traced.state_dict()[key], want)
    # one graph per mode at most (train/eval differ only for layers with running stats),
    # each with real operations in it: the compiled code ran, not an eager fallback
    assert 1 <= counter.frame_count <= 2
    assert counter.op_count > 0


def test_inductor_compiles_batchnorm2d_forward_and_backward() -> None:
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(8, 3, 6, 6, generator=generator) * 3 + 2).requires_grad_()
    dy = torch.randn(8, 3, 6, 6, generator=generator)
    eager, traced = nl.BatchNorm2d(3), nl.BatchNorm2d(3)
    with torch.no_grad():
        eager.weight.uniform_(0.5, 1.5, generator=generator)
        eager.bias.uniform_(-1, 1, generator=generator)
    traced.load_state_dict(eager.state_dict())
    compiled = torch.compile(traced, fullgraph=True)  # inductor: generated C++ kernels
    # compiling in this process skips starting a pool of compile workers (~10 s on 2 cores)
    with torch._inductor.config.patch(compile_threads=1):
        results = _fwd_bwd(compiled, x, dy)
    for got, want in zip(results, _fwd_bwd(eager, x, dy), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(traced.running_var, eager.running_var)
