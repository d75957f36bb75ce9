"""normlab.kernels.triton.common.launch: Triton's launch the first time, the compiled
kernel's own launcher after that, with the arguments in the kernel's parameter order.

No GPU here: a stand-in kernel records how it is called, the way Triton's ``JITFunction``
(``kernel[grid](...)``, returning the compiled kernel) and ``CompiledKernel.run`` are."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("triton")

from normlab.kernels.triton import common as triton_common


class _Compiled:
    function = "function handle"
    packed_metadata = "metadata"

    def __init__(self, calls: list[tuple[str, tuple[Any, ...]]]) -> None:
        self.calls = calls

    def run(self, *args: Any) -> None:
        self.calls.append(("direct", args))


class _Kernel:
    """``kernel[grid](*args, **constexprs)`` as Triton's JITFunction takes it."""

    arg_names = ("x_ptr", "n", "BLOCK", "FLAG")

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def run(*args: Any, **constexprs: Any) -> _Compiled:
            self.calls.append(("triton", (grid, args, constexprs)))
            return _Compiled(self.calls)

        return run


@pytest.fixture
def on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors taken for CUDA ones: current device 0, its stream 77."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 77, raising=False)
    triton_common._COMPILED.clear()
    yield
    triton_common._COMPILED.clear()


def test_second_launch_goes_straight_to_the_compiled_kernel(on_gpu: None) -> None:
    kernel, x = _Kernel(), torch.zeros(4)
    triton_common.launch(kernel, (3,), ("key",), (x, 5), FLAG=True, BLOCK=16)
    triton_common.launch(kernel, (3, 2), ("key",), (x, 5), FLAG=True, BLOCK=16)
    assert [kind for kind, _ in kernel.calls] == ["triton", "direct"]
    assert kernel.calls[0][1] == ((3,), (x, 5), {"FLAG": True, "BLOCK": 16})
    # grid padded to 3, the stream, the handle, metadata, no hooks, then every argument
    # in the kernel's parameter order: the constexprs after the runtime ones
    grid, stream, rest = kernel.calls[1][1][:3], kernel.calls[1][1][3], kernel.calls[1][1][4:]
    assert grid == (3, 2, 1) and stream == 77
    assert rest == ("function handle", "metadata", None, None, None, x, 5, 16, True)


def test_another_key_an_unaligned_tensor_or_a_launch_hook_take_tritons_path(
    on_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel, x = _Kernel(), torch.zeros(8)
    triton_common.launch(kernel, (1,), ("a",), (x, 5), BLOCK=16, FLAG=True)
    triton_common.launch(kernel, (1,), ("b",), (x, 5), BLOCK=16, FLAG=True)  # new key
    triton_common.launch(kernel, (1,), ("a",), (x[1:], 5), BLOCK=16, FLAG=True)  # 4 bytes in
    monkeypatch.setattr(triton_common, "_hooked", lambda: True)
    triton_common.launch(kernel, (1,), ("a",), (x, 5), BLOCK=16, FLAG=True)
    assert [kind for kind, _ in kernel.calls] == ["triton"] * 4


def test_cpu_tensors_always_take_tritons_path() -> None:
    """Under the interpreter (CPU tensors) nothing is cached: it has no compiled kernel."""
    kernel, x = _Kernel(), torch.zeros(4)
    for _ in range(2):
        triton_common.launch(kernel, (1,), ("cpu",), (x, 5), BLOCK=16, FLAG=True)
    assert [kind for kind, _ in kernel.calls] == ["triton", "triton"]
    assert not triton_common._COMPILED


def test_the_table_of_launchers_stays_bounded(
    on_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(triton_common, "MAX_LAUNCHERS", 3)
    kernel, x = _Kernel(), torch.zeros(4)
    for shape in range(7):  # inputs of ever new shapes
        triton_common.launch(kernel, (1,), (shape,), (x, 5), BLOCK=16, FLAG=True)
    assert 1 <= len(triton_common._COMPILED) <= 3
