"""Layer, group and RMS norm under ``torch.compile`` on the CPU: normlab's C++ operators.

Where the kernels are built, a compiled graph calls ``torch.ops.normlab.layer_norm``,
``group_norm`` and ``rms_norm`` (one call each way, the loops eager mode runs); without
them, or for half precision, the plain formula. Oracle: ``torch.nn.functional`` in float64
(values and gradients), also with dynamic shapes (two batch sizes, one graph) and under
inductor.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import normlab.functional as N
from normlab import kernels
from normlab.functional._fast import layernorm as layernorm_fast
from normlab.testing.tolerance import assert_close_sum

F64 = torch.float64

# (id, ours(x, w, b), torch's(x, w, b), the operator's name, input shape, parameter shape)
CASES = [
    (
        "layer",
        lambda x, w, b: N.layer_norm(x, [6], w, b),
        lambda x, w, b: F.layer_norm(x, [6], w, b),
        "layer_norm",
        (6,),
    ),
    (
        "group",
        lambda x, w, b: N.group_norm(x, 2, w[:4], b[:4]),
        lambda x, w, b: F.group_norm(x, 2, w[:4], b[:4]),
        "group_norm",
        (6,),
    ),
    (
        "rms",
        lambda x, w, b: N.rms_norm(x, [6], w),  # (b unused: no other kernel in the graph)
        lambda x, w, b: F.rms_norm(x, [6], w),
        "rms_norm",
        (6,),
    ),
]
IDS = [case[0] for case in CASES]


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The operators, taken under compile from the first element on (the tests' inputs
    are small)."""
    library = kernels.ops()
    if library is None:
        pytest.skip("normlab's CPU kernels are not built or are off (NORMLAB_KERNELS=0)")
    monkeypatch.setattr(layernorm_fast, "COMPILED_OPERATOR_MIN_ELEMENTS", 1)
    monkeypatch.setattr(layernorm_fast, "COMPILED_OPERATOR_MIN_ROW", 1)
    return library


class _Recorder:
    """A ``torch.compile`` backend that keeps the names of the operators its graphs call."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        self.targets += [str(node.target) for node in gm.graph.nodes]
        return gm.forward


def _fwd_bwd(fn: Callable, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> list:
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b)
    return [y.detach(), *torch.autograd.grad(y.sin().sum(), [x, w, b], allow_unused=True)]


def _inputs(batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, 4, 6, dtype=dtype) * 2 + 0.5
    return x, torch.rand(6, dtype=dtype) + 0.5, torch.randn(6, dtype=dtype)


def _close(mine: list, exact: list, terms: int, dtype: torch.dtype) -> None:
    for a, e in zip(mine, exact, strict=True):
        if a is None and e is None:  # an argument the norm does not take
            continue
        # sums of at most ``terms`` terms of the size of the largest value, in another order
        assert_close_sum(a, e.to(a.dtype), terms=terms, abs_sum=e.abs().max() + 1, dtype=dtype)


@pytest.mark.parametrize(("name", "ours", "theirs", "op", "pshape"), CASES, ids=IDS)
def test_the_graph_calls_the_operator_with_dynamic_shapes(
    ops: Any, name: str, ours, theirs, op: str, pshape
) -> None:
    torch._dynamo.reset()
    recorder = _Recorder()
    compiled = torch.compile(ours, backend=recorder, dynamic=True, fullgraph=True)
    for batch in (3, 5):  # one graph for both: the Meta kernels take symbolic sizes
        x, w, b = _inputs(batch, F64)
        _close(_fwd_bwd(compiled, x, w, b), _fwd_bwd(theirs, x, w, b), x.numel(), F64)
    assert f"normlab.{op}" in recorder.targets


@pytest.mark.parametrize(("name", "ours", "theirs", "op", "pshape"), CASES, ids=IDS)
def test_inductor_runs_the_operator_in_float32(
    ops: Any, name: str, ours, theirs, op: str, pshape
) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    x, w, b = _inputs(3, torch.float32)
    exact = _fwd_bwd(theirs, *(t.double() for t in (x, w, b)))
    _close(_fwd_bwd(compiled, x, w, b), exact, x.numel(), torch.float32)


@pytest.mark.parametrize(("name", "ours", "theirs", "op", "pshape"), CASES, ids=IDS)
def test_small_inputs_compile_the_plain_formula(name: str, ours, theirs, op: str, pshape) -> None:
    if kernels.ops() is None:
        pytest.skip("normlab's CPU kernels are not built or are off (NORMLAB_KERNELS=0)")
    torch._dynamo.reset()
    recorder = _Recorder()
    compiled = torch.compile(ours, backend=recorder, fullgraph=True)
    x, w, b = _inputs(3, F64)  # far below COMPILED_OPERATOR_MIN_ELEMENTS
    _close(_fwd_bwd(compiled, x, w, b), _fwd_bwd(theirs, x, w, b), x.numel(), F64)
    assert not any("normlab" in target for target in recorder.targets)


@pytest.mark.parametrize(("name", "ours", "theirs", "op", "pshape"), CASES, ids=IDS)
def test_short_rows_compile_the_plain_formula(
    monkeypatch: pytest.MonkeyPatch, name: str, ours, theirs, op: str, pshape
) -> None:
    """Above the element threshold, rows shorter than COMPILED_OPERATOR_MIN_ROW (here 6 or
    12 values; the threshold lowered to 1 element) still run the formula, and rows as
    long as the threshold the operator."""
    if kernels.ops() is None:
        pytest.skip("normlab's CPU kernels are not built or are off (NORMLAB_KERNELS=0)")
    monkeypatch.setattr(layernorm_fast, "COMPILED_OPERATOR_MIN_ELEMENTS", 1)
    for min_row, called in ((13, False), (6, True)):  # group norm's rows: 2 x 6 = 12 values
        monkeypatch.setattr(layernorm_fast, "COMPILED_OPERATOR_MIN_ROW", min_row)
        torch._dynamo.reset()
        recorder = _Recorder()
        compiled = torch.compile(ours, backend=recorder, fullgraph=True)
        x, w, b = _inputs(3, F64)
        _close(_fwd_bwd(compiled, x, w, b), _fwd_bwd(theirs, x, w, b), x.numel(), F64)
        assert (f"normlab.{op}" in recorder.targets) is called


def test_half_precision_compiles_the_plain_formula(ops: Any) -> None:
    torch._dynamo.reset()
    recorder = _Recorder()
    compiled = torch.compile(lambda x: N.layer_norm(x, [6]), backend=recorder, fullgraph=True)
    x = torch.randn(3, 6, dtype=torch.bfloat16)
    y = compiled(x)
    assert y.dtype == torch.bfloat16
    assert not any("normlab" in target for target in recorder.targets)


FIRST_CALL_COMPILED = """
import torch
import normlab.functional as N
import normlab.nn
x = torch.randn(4, 6, 3, requires_grad=True)
compiled = [
    lambda t: N.rms_norm(t, [3]),  # no module built yet: the kernels are not loaded
    normlab.nn.LayerNorm(3),
    normlab.nn.GroupNorm(2, 6),
    normlab.nn.RMSNorm([6, 3]),
]
for f in compiled:
    torch.compile(f, fullgraph=True, backend="aot_eager")(x).sum().backward()
print("ok")
"""


def test_the_first_call_of_a_process_compiles_in_one_graph() -> None:
    """Loading the kernels (a file-system check, maybe a build) inside a trace would break
    ``fullgraph=True``: they load when a module is built, and a function traced before any
    load runs the formula."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_CALL_COMPILED], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
