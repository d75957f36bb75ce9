"""FilterResponseNorm2d against Singh & Krishnan's formula in float64, and the usual proofs."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import normlab.nn
from normlab.functional.filter_response import filter_response_norm
from normlab.nn.filter_response import FilterResponseNorm2d
from normlab.testing import references
from normlab.testing.tolerance import assert_close_sum, sum_tolerance, unit_roundoff

COMPILE_BACKEND = "aot_eager" if os.environ.get("ATEN_CPU_CAPABILITY") == "default" else "inductor"


def _pair(c: int, dtype: torch.dtype = torch.float64, **kwargs: object) -> tuple[nn.Module, ...]:
    ours = FilterResponseNorm2d(c, dtype=dtype, **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.copy_((1.0 if name == "weight" else 0.0) + 0.5 * torch.randn_like(p))
    oracle = references.FilterResponseNorm2d(c, dtype=torch.float64, **kwargs)  # type: ignore[arg-type]
    oracle.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    return ours, oracle


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [((3, 4, 5, 5), {}), ((2, 4, 1, 1), {"learnable_eps": True}), ((2, 4, 3, 7), {"eps": 1e-2})],
)
def test_equals_the_papers_formula_in_float64(shape: tuple[int, ...], kwargs: dict) -> None:
    ours, oracle = _pair(shape[1], **kwargs)
    x = 2 * torch.randn(shape, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = ours(x1), oracle(x2)
    m = shape[2] * shape[3]
    assert_close_sum(y1, y2, terms=m, abs_sum=y2.abs() * 10 + 10)
    upstream = torch.randn_like(y2)
    y1.backward(upstream)
    y2.backward(upstream)
    bound = shape[0] * m * upstream.abs().max() * 100
    assert_close_sum(x1.grad, x2.grad, terms=m, abs_sum=bound)
    theirs = dict(oracle.named_parameters())
    for name, p in ours.named_parameters():
        assert_close_sum(p.grad, theirs[name].grad, terms=shape[0] * m, abs_sum=bound)


def test_tau_thresholds_and_the_norm_ignores_the_batch() -> None:
    layer, _ = _pair(3)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    y = layer(x)
    assert bool((y >= layer.tau.view(1, -1, 1, 1)).all())
    assert torch.equal(layer(x[:1]), y[:1])  # one sample alone: the same output
    assert torch.equal(layer.eval()(x), y)  # no running statistics, no mode


def test_gradcheck_and_gradgradcheck() -> None:
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    eps = torch.tensor([0.1], dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, t: torch.Tensor, e: torch.Tensor):
        return filter_response_norm(x, w, b, t, 1e-6 + e.abs())

    assert torch.autograd.gradcheck(f, (x, *params, eps))
    assert torch.autograd.gradgradcheck(f, (x, *params, eps))


def test_compiled_equals_eager() -> None:
    layer, _ = _pair(4, torch.float32, learnable_eps=True)
    compiled = torch.compile(layer, fullgraph=True, backend=COMPILE_BACKEND)
    x = torch.randn(2, 4, 6, 6)
    y = layer(x)
    assert_close_sum(compiled(x), y, terms=36, abs_sum=y.abs() * 10 + 10)


def test_far_from_zero_float32_against_float64() -> None:
    layer, oracle = _pair(3, torch.float32)
    x = 1e4 + 1e-2 * torch.randn(2, 3, 6, 6)
    expected = oracle(x.double())
    assert_close_sum(layer(x), expected, terms=36, abs_sum=expected.abs() * 10 + 10)


def test_bfloat16_computes_in_float32_and_rounds_once() -> None:
    layer, oracle = _pair(3, torch.bfloat16)
    x = (2 * torch.randn(2, 3, 5, 5)).to(torch.bfloat16)
    y, expected = layer(x), oracle(x.double())
    assert y.dtype == torch.bfloat16
    tolerance = unit_roundoff(torch.bfloat16) * expected.abs() + sum_tolerance(
        torch.float32, 25, expected.abs() * 10 + 10
    )
    assert bool(((y.double() - expected).abs() <= tolerance).all())


def test_parameters_state_dict_and_errors() -> None:
    layer = FilterResponseNorm2d(4)
    assert list(layer.state_dict()) == ["weight", "bias", "tau"]
    learned = FilterResponseNorm2d(4, learnable_eps=True)
    assert list(learned.state_dict()) == ["weight", "bias", "tau", "eps_learned"]
    assert float(learned.eps_learned) == pytest.approx(1e-4)
    assert repr(layer) == "FilterResponseNorm2d(4, eps=1e-06, learnable_eps=False)"
    with pytest.raises(ValueError, match="num_features must be a positive integer, got 0"):
        FilterResponseNorm2d(0)
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        layer(torch.randn(2, 4))


def test_registry_learns_eps_for_fully_connected_features() -> None:
    fc = normlab.nn.create_norm_layer("frn", 6, dims=0)
    conv = normlab.nn.create_norm_layer("frn", 6, dims=2)
    assert fc.layer.learnable_eps and not conv.learnable_eps
    assert fc(torch.randn(5, 6)).shape == (5, 6)


def test_autograd_gives_the_closed_form_backward_of_the_module_docstring() -> None:
    """dL/dx = weight r (g - x mean_HW(g x) r^2), g = dL/dy where z > tau, r = (nu2+eps)^-1/2;
    dL/dtau = sum of dL/dy where z <= tau; dL/dweight = sum(g x r); dL/dbias = sum(g)."""
    n, c, h, w, eps = 3, 4, 5, 5, 1e-3
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    weight, bias, tau = (torch.randn(c, dtype=torch.float64, requires_grad=True) for _ in range(3))
    y = filter_response_norm(x, weight, bias, tau, eps)
    upstream = torch.randn_like(y)
    dx, dweight, dbias, dtau = torch.autograd.grad(y, (x, weight, bias, tau), upstream)
    with torch.no_grad():
        view = (1, c, 1, 1)
        r = (x.square().mean((2, 3), keepdim=True) + eps).rsqrt()
        z = weight.view(view) * x * r + bias.view(view)
        passes = z > tau.view(view)
        g = torch.where(passes, upstream, torch.zeros_like(upstream))
        gw = g * weight.view(view)
        expected_dx = r * (gw - x * (gw * x).mean((2, 3), keepdim=True) * r.square())
        expected = {
            "dx": expected_dx,
            "dweight": (g * x * r).sum((0, 2, 3)),
            "dbias": g.sum((0, 2, 3)),
            "dtau": torch.where(passes, torch.zeros_like(upstream), upstream).sum((0, 2, 3)),
        }
    bound = upstream.abs().sum() * 10
    for name, got in (("dx", dx), ("dweight", dweight), ("dbias", dbias), ("dtau", dtau)):
        assert_close_sum(got, expected[name], terms=n * h * w, abs_sum=bound)
