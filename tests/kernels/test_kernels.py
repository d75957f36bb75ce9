"""normlab.kernels: built by make, loaded once, taken only where they apply, and as
accurate as the pure-tensor path (float64 oracle) far from zero; same numbers on any
number of threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import normlab.functional as NF
from normlab import kernels
from normlab.kernels.cpu import build


def test_the_kernels_are_built_and_loaded() -> None:
    assert build.LIBRARY.is_file(), "run make (python -m normlab.kernels.cpu)"
    assert not build.is_stale()
    ops = kernels.ops()
    assert ops is not None
    for name in ("batch_norm_forward", "batch_norm_backward", "channel_affine",
                 "layer_norm_forward", "layer_norm_backward",
                 "group_norm_forward", "group_norm_backward",
                 "avg_pool2x2_forward", "avg_pool2x2_backward",
                 "use_caching_cpu_allocator", "cached_cpu_bytes",
                 "batch_norm_train", "layer_norm", "group_norm"):  # fmt: skip
        assert hasattr(ops, name), name


def test_normlab_kernels_0_turns_them_off() -> None:
    code = "from normlab import kernels; print(kernels.ops() is None)"
    env = {**os.environ, "NORMLAB_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr


def test_set_enabled_switches_the_path() -> None:
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    try:
        kernels.set_enabled(False)
        assert not kernels.applies(x)
    finally:
        kernels.set_enabled(True)
    assert kernels.applies(x)


@pytest.mark.parametrize(
    "tensors,expected",
    [
        ((torch.randn(4, 3),), True),
        ((torch.randn(4, 3, dtype=torch.float64), None, torch.randn(3, dtype=torch.float64)), True),
        ((torch.randn(4, 3, dtype=torch.float16),), False),  # half: the tensor path
        ((torch.randn(4, 3, dtype=torch.bfloat16),), False),
        ((torch.randn(3, 4).t(),), False),  # not contiguous
        ((torch.randn(4, 3), torch.randn(3, dtype=torch.float64)), False),  # mixed dtypes
    ],
)
def test_applies(tensors: tuple, expected: bool) -> None:
    assert kernels.applies(*tensors) is expected


def test_a_stale_library_is_detected(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "k.cpp"
    library = tmp_path / "_kernels.so"
    source.write_text("// a kernel\n")
    monkeypatch.setattr(build, "HERE", tmp_path)
    monkeypatch.setattr(build, "LIBRARY", library)
    assert build.is_stale()  # missing
    library.write_bytes(b"")
    os.utime(source, (1, 1))
    assert not build.is_stale()
    os.utime(source, None)  # edited after the build
    os.utime(library, (1, 1))
    assert build.is_stale()


def test_a_stale_library_is_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources edited after the build: the library's operators may not match the Python
    code, so normlab warns and keeps to the tensor code."""
    monkeypatch.setattr(build, "is_stale", lambda: True)
    with pytest.warns(UserWarning, match="run `make kernels`"):
        assert kernels._load() is None


def test_a_missing_compiler_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(OSError, match=r"no C\+\+ compiler 'no-such-compiler-xyz'"):
        build.build(force=True)
    assert build.main(["--force"]) == 2


# ---------------------------------------------------------------------------------------------
# Accuracy far from zero, threads
# ---------------------------------------------------------------------------------------------


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Layer norm over (C, H, W) with the per-channel w, b spread over the positions."""
    shape = x.shape[1:]
    spread = (-1,) + (1,) * (len(shape) - 1)
    weight = w.view(spread).expand(shape).contiguous()
    bias = b.view(spread).expand(shape).contiguous()
    return NF.layer_norm(x, list(shape), weight, bias)


LAYERS = {
    "batch": lambda x, w, b: NF.batch_norm(x, None, None, w, b, training=True),
    "layer": _layer_norm,
    "group": lambda x, w, b: NF.group_norm(x, 2, w, b),
}


def _run(name: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, g: torch.Tensor):
    x = x.clone().requires_grad_()
    w = w.clone().requires_grad_()
    b = b.clone().requires_grad_()
    y = LAYERS[name](x, w, b)
    grads = torch.autograd.grad(y, (x, w), g)
    return y.detach(), *grads


@pytest.mark.parametrize("name", list(LAYERS))
def test_far_from_zero_float32_is_as_accurate_as_float64(name: str) -> None:
    """Mean 1e4, std 1e-2 in float32: outputs and gradients within ~1e-3 of float64
    (subtracting the rounded mean, as torch.nn does, would be off by ~0.05)."""
    gen = torch.Generator().manual_seed(0)
    x = 1e4 + 1e-2 * torch.randn(8, 4, 6, 6, generator=gen, dtype=torch.float64)
    x = x.float().double()  # the oracle sees the same (float32) values
    w = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    g = torch.randn(8, 4, 6, 6, generator=gen, dtype=torch.float64)
    assert kernels.applies(x.float())
    reference = _run(name, x, w, b, g)
    ours = _run(name, x.float(), w.float(), b.float(), g.float())
    for mine, exact in zip(ours, reference, strict=True):
        scale = exact.abs().max().item()
        assert (mine.double() - exact).abs().max().item() <= 2e-3 * scale


@pytest.mark.parametrize("name", list(LAYERS))
def test_two_threads_give_the_numbers_of_one(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x, g = (torch.randn(16, 4, 9, 9, generator=gen) for _ in range(2))
    w, b = torch.rand(4, generator=gen) + 0.5, torch.randn(4, generator=gen)
    one = _run(name, x, w, b, g)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = _run(name, x, w, b, g)
    finally:
        torch.set_num_threads(before)
    for a, c in zip(one, two, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_runs_on_the_cpu_only_when_enabled() -> None:
    assert kernels.runs_on("cpu") and kernels.runs_on(torch.device("cpu"))
    assert not kernels.runs_on("cuda") and not kernels.runs_on("meta")
    try:
        kernels.set_enabled(False)
        assert not kernels.runs_on("cpu")
    finally:
        kernels.set_enabled(True)
