"""EvoNorm2dB0 / EvoNorm2dS0 against Liu et al.'s formulas in float64, and the usual proofs."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import normlab.nn
from normlab.functional.evonorm import evonorm_b0, evonorm_s0
from normlab.nn.evonorm import EvoNorm2dB0, EvoNorm2dS0
from normlab.testing import references
from normlab.testing.tolerance import assert_close_sum, sum_tolerance, unit_roundoff

COMPILE_BACKEND = "aot_eager" if os.environ.get("ATEN_CPU_CAPABILITY") == "default" else "inductor"


def _pair(cls: type, *args: object, dtype: torch.dtype = torch.float64, **kw: object):
    ours = cls(*args, dtype=dtype, **kw)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.copy_((1.0 if name in ("weight", "v") else 0.0) + 0.3 * torch.randn_like(p))
        if hasattr(ours, "running_var"):
            ours.running_var.copy_(0.5 + torch.rand_like(ours.running_var))
    oracle = getattr(references, cls.__name__)(*args, dtype=torch.float64, **kw)
    oracle.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    return ours, oracle


def _compare(ours: nn.Module, oracle: nn.Module, x: torch.Tensor, terms: int) -> None:
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = ours(x1), oracle(x2)
    assert_close_sum(y1, y2, terms=terms, abs_sum=y2.abs() * 10 + 10)
    upstream = torch.randn_like(y2)
    y1.backward(upstream)
    y2.backward(upstream)
    bound = x.numel() * upstream.abs().max() * 100
    assert_close_sum(x1.grad, x2.grad, terms=terms, abs_sum=bound)
    theirs = dict(oracle.named_parameters())
    for name, p in ours.named_parameters():
        assert_close_sum(p.grad, theirs[name].grad, terms=x.numel(), abs_sum=bound)
    for name, b in ours.named_buffers():
        assert_close_sum(b, dict(oracle.named_buffers())[name], terms=terms, abs_sum=b.abs() * 10)


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.3, "eps": 1e-3}])
def test_b0_equals_the_papers_formula_in_training_and_evaluation(kwargs: dict) -> None:
    ours, oracle = _pair(EvoNorm2dB0, 3, **kwargs)
    for training in (True, True, False):
        ours.train(training)
        oracle.train(training)
        _compare(ours, oracle, 2 * torch.randn(4, 3, 5, 5, dtype=torch.float64) + 1, 100)


@pytest.mark.parametrize(("c", "groups"), [(4, 1), (4, 2), (6, 6), (8, 4)])
def test_s0_equals_the_papers_formula(c: int, groups: int) -> None:
    ours, oracle = _pair(EvoNorm2dS0, c, groups=groups)
    _compare(ours, oracle, 2 * torch.randn(3, c, 4, 4, dtype=torch.float64) + 1, 16 * c)


def test_b0_running_variance_is_the_unbiased_batch_variance() -> None:
    layer = EvoNorm2dB0(2, momentum=1.0, dtype=torch.float64)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64) * torch.tensor([1.0, 4.0]).view(1, 2, 1, 1)
    layer(x)
    expected = x.var((0, 2, 3), correction=1)
    assert_close_sum(layer.running_var, expected, terms=48, abs_sum=expected * 10)


def test_s0_is_batch_independent() -> None:
    layer, _ = _pair(EvoNorm2dS0, 4, groups=2)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    assert torch.equal(layer(x)[1:2], layer(x[1:2]))


def test_gradcheck_and_gradgradcheck() -> None:
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    v = torch.randn(4, dtype=torch.float64)
    params = [t.requires_grad_(True) for t in (w, b, v)]
    running = torch.ones(4, dtype=torch.float64)

    def b0(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return evonorm_b0(x, running.clone(), w, b, v, True, 0.1, 1e-5)

    def s0(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return evonorm_s0(x, w, b, v, 2, 1e-5)

    for f in (b0, s0):
        assert torch.autograd.gradcheck(f, (x, *params))
        assert torch.autograd.gradgradcheck(f, (x, *params))


@pytest.mark.parametrize("cls", [EvoNorm2dB0, EvoNorm2dS0])
def test_compiled_equals_eager(cls: type) -> None:
    args = (4,) if cls is EvoNorm2dB0 else (4, 2)
    eager = cls(*args)
    compiled_module = cls(*args)
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, fullgraph=True, backend=COMPILE_BACKEND)
    x = 2 * torch.randn(3, 4, 5, 5) + 1
    y = eager(x)
    assert_close_sum(compiled(x), y, terms=75, abs_sum=y.abs() * 10 + 10)
    for name, buffer in eager.named_buffers():
        got = compiled_module.state_dict()[name]
        assert_close_sum(got, buffer, terms=75, abs_sum=buffer.abs() * 10)


@pytest.mark.parametrize("cls", [EvoNorm2dB0, EvoNorm2dS0])
def test_far_from_zero_float32_against_float64(cls: type) -> None:
    args = (3,) if cls is EvoNorm2dB0 else (4, 2)
    ours, oracle = _pair(cls, *args, dtype=torch.float32)
    x = 1e4 + 1e-2 * torch.randn(4, args[0], 5, 5)
    y, expected = ours(x), oracle(x.double())
    # outputs ~ x / std ~ 1e6: relative accuracy of sums of 100 terms
    assert_close_sum(y, expected, terms=100, abs_sum=expected.abs() * 10)


@pytest.mark.parametrize("cls", [EvoNorm2dB0, EvoNorm2dS0])
def test_bfloat16_computes_in_float32_and_rounds_once(cls: type) -> None:
    args = (3,) if cls is EvoNorm2dB0 else (4, 2)
    ours, oracle = _pair(cls, *args, dtype=torch.bfloat16)
    x = (2 * torch.randn(4, args[0], 5, 5)).to(torch.bfloat16)
    y, expected = ours(x), oracle(x.double())
    assert y.dtype == torch.bfloat16
    tolerance = unit_roundoff(torch.bfloat16) * expected.abs() + sum_tolerance(
        torch.float32, 100, expected.abs() * 10 + 10
    )
    assert bool(((y.double() - expected).abs() <= tolerance).all())


def test_state_dicts_are_timms() -> None:
    assert list(EvoNorm2dB0(4).state_dict()) == ["weight", "bias", "v", "running_var"]
    assert list(EvoNorm2dS0(4, 2).state_dict()) == ["weight", "bias", "v"]
    assert repr(EvoNorm2dS0(4, 2)) == "EvoNorm2dS0(4, groups=2, eps=1e-05)"
    assert repr(EvoNorm2dB0(4)) == "EvoNorm2dB0(4, momentum=0.1, eps=1e-05)"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EvoNorm2dS0(6, groups=4), r"num_features \(6\) must be divisible by groups \(4\)"),
        (lambda: EvoNorm2dS0(16), r"num_features \(16\) must be divisible by groups \(32\)"),
        (lambda: EvoNorm2dS0(4, groups=0), r"groups must be a positive integer, got 0"),
        (lambda: EvoNorm2dB0(0), r"num_features must be a positive integer, got 0"),
        (lambda: EvoNorm2dS0(0, groups=1), r"num_features must be a positive integer, got 0"),
    ],
)
def test_bad_arguments(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        EvoNorm2dB0(3)(torch.randn(4, 3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        EvoNorm2dB0(3)(torch.randn(1, 3, 1, 1))


def test_registry_builds_them() -> None:
    s0 = normlab.nn.create_norm_layer("evonorm-s0", 12, dims=2)
    assert isinstance(s0, EvoNorm2dS0) and s0.groups == 6
    b0 = normlab.nn.create_norm_layer("evonorm-b0", 12, dims=0)
    assert isinstance(b0.layer, EvoNorm2dB0) and b0(torch.randn(5, 12)).shape == (5, 12)
    with pytest.raises(ValueError, match="not dims=1"):
        normlab.nn.create_norm_layer("evonorm-b0", 12, dims=1)
