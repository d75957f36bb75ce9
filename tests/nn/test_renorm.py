"""BatchRenorm1d/2d/3d: batch norm exactly at rmax=1, dmax=0 (torch.nn in float64), Ioffe's
formula in float64 otherwise (normlab.testing.references), and the usual proofs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import normlab.nn
from normlab.functional.renorm import RenormWarmup, batch_renorm
from normlab.nn.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from normlab.testing import references
from normlab.testing.tolerance import assert_close_sum, sum_tolerance, unit_roundoff

COMPILE_BACKEND = "aot_eager" if os.environ.get("ATEN_CPU_CAPABILITY") == "default" else "inductor"
SHAPES = {1: (6, 3, 5), 2: (4, 3, 5, 5), 3: (3, 3, 2, 3, 4)}
CLASSES = {1: BatchRenorm1d, 2: BatchRenorm2d, 3: BatchRenorm3d}


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kwargs", [{}, {"momentum": None, "affine": False}, {"bias": False}])
def test_without_room_to_correct_it_is_torch_batch_norm(
    dims: int,
    kwargs: dict[str, Any],
    same_random_state: Callable[..., None],
    steps_agree: Callable[..., None],
) -> None:
    base = {"momentum": 0.1, **kwargs}
    ours = CLASSES[dims](3, rmax=1.0, dmax=0.0, dtype=torch.float64, **base)
    torch_bn = getattr(nn, f"BatchNorm{dims}d")(3, dtype=torch.float64, **base)
    same_random_state(ours, torch_bn)
    steps_agree(ours, torch_bn, SHAPES[dims])


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"rmax": 1.1, "dmax": 0.05}, {"momentum": None, "affine": False}, {"eps": 1e-2}],
)
def test_equals_the_papers_formula_in_float64(
    dims: int,
    kwargs: dict[str, Any],
    same_random_state: Callable[..., None],
    steps_agree: Callable[..., None],
) -> None:
    ours = CLASSES[dims](3, dtype=torch.float64, **kwargs)
    oracle = getattr(references, f"BatchRenorm{dims}d")(3, dtype=torch.float64, **kwargs)
    same_random_state(ours, oracle)
    steps_agree(ours, oracle, SHAPES[dims], scale=3.0)


def test_clipping_is_what_separates_it_from_batch_norm() -> None:
    """Running statistics far from the batch's: r and d hit their limits, and the output is
    batch norm's times rmax plus dmax (weight 1, bias 0)."""
    ours = BatchRenorm2d(3, rmax=2.0, dmax=0.5, dtype=torch.float64)
    with torch.no_grad():
        ours.running_var.fill_(1e-3)  # sigma_B / sigma >> 2
        ours.running_mean.fill_(-100.0)  # (mu_B - mu) / sigma >> 0.5
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    bn = nn.functional.batch_norm(x, None, None, training=True, eps=1e-5)
    n = x.numel() // 3
    assert_close_sum(ours(x), bn * 2.0 + 0.5, terms=n, abs_sum=bn.abs() * 2 + 1)


def test_warmup_schedule_is_the_papers() -> None:
    w = RenormWarmup()

    def limits(step: int) -> tuple[float, float]:
        rmax, dmax = w.limits(step, 3.0, 5.0)
        return float(rmax), float(dmax)

    assert limits(0) == (1.0, 0.0)
    assert limits(5000) == (1.0, 0.0)
    assert limits(40000) == (3.0, 5.0)
    assert limits(15000) == (1.0 + 2.0 * 10000 / 35000, 5.0 * 10000 / 20000)
    assert limits(10**6) == (3.0, 5.0)
    step = RenormWarmup(start=3, rmax_at=3, dmax_at=3)  # no ramp: a step at `start`
    assert [float(step.limits(s, 3.0, 5.0)[0]) for s in (3, 4)] == [1.0, 3.0]
    with pytest.raises(ValueError, match="warm-up steps must satisfy"):
        RenormWarmup(start=10, rmax_at=5)


def test_warmup_in_the_layer_starts_as_batch_norm_and_ends_as_renorm(
    same_random_state: Callable[..., None],
) -> None:
    warmup = RenormWarmup(start=1, rmax_at=3, dmax_at=2)
    ours = BatchRenorm2d(3, dtype=torch.float64, warmup=warmup, momentum=0.5)
    oracle = references.BatchRenorm2d(3, dtype=torch.float64, warmup=warmup, momentum=0.5)
    same_random_state(ours, oracle)
    limits = []
    for _ in range(4):
        x = 3 * torch.randn(4, 3, 3, 3, dtype=torch.float64)
        torch.testing.assert_close(ours(x), oracle(x), rtol=0, atol=1e-12)
        limits.append(tuple(float(limit) for limit in ours.limits()))
    assert limits == [(1.0, 0.0), (1.0, 0.0), (2.0, 5.0), (3.0, 5.0)]
    assert "warmup=RenormWarmup(start=1, rmax_at=3, dmax_at=2)" in repr(ours)


def test_gradcheck_and_gradgradcheck() -> None:
    """Finite differences see r and d move with x, the paper's gradient holds them fixed: the
    two agree where the clipping holds them (r = rmax, d = -dmax here). momentum 0 keeps the
    running statistics between evaluations. (Unclipped, the gradient is checked against
    autograd through the formula with detached r and d, in the parity tests above.)"""
    rm = 5 + 0.3 * torch.randn(3, dtype=torch.float64)
    rv = 0.01 * (0.5 + torch.rand(3, dtype=torch.float64))
    w = (0.5 + torch.rand(3, dtype=torch.float64)).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x = (2 * torch.randn(4, 3, 3, 3, dtype=torch.float64)).requires_grad_(True)

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return batch_renorm(x, rm, rv, w, b, True, 0.0, 1e-5, 1.5, 0.2)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("warmup", [None, RenormWarmup(start=0, rmax_at=3, dmax_at=2)])
def test_compiled_equals_eager_with_running_statistics(
    warmup: RenormWarmup | None,
    same_random_state: Callable[..., None],
    float32_buffers_agree: Callable[..., None],
) -> None:
    eager = BatchRenorm2d(4, momentum=0.2, warmup=warmup)
    same_random_state(eager)
    compiled_module = BatchRenorm2d(4, momentum=0.2, warmup=warmup)
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, fullgraph=True, backend=COMPILE_BACKEND)
    for _ in range(2):
        x = 2 * torch.randn(4, 4, 5, 5)
        y = eager(x)
        n = x.numel() // 4
        assert_close_sum(compiled(x), y, terms=n, abs_sum=y.abs() + 10)
    float32_buffers_agree(compiled_module, eager, terms=n)


@pytest.mark.parametrize(
    "kwargs",
    [{"momentum": 0.5}, {"momentum": 0.0, "warmup": RenormWarmup(start=0, rmax_at=3, dmax_at=2)}],
    ids=["running-statistics", "warmup"],
)
def test_compiled_small_fully_connected_batch_equals_the_papers_formula_in_float64(
    kwargs: dict[str, Any],
    same_random_state: Callable[..., None],
    steps_agree: Callable[..., None],
) -> None:
    """A compiled (N, C) layer on a batch of 4: the backward's r and d are the step's own,
    not recomputed from the running statistics and step count the step has already
    updated in place (the compiler recomputes small values in the backward rather than save
    them; it took the buffers for unchanged, and the gradients missed by up to 1.2)."""
    torch._dynamo.reset()
    ours = BatchRenorm1d(5, dtype=torch.float64, **kwargs)
    oracle = references.BatchRenorm1d(5, dtype=torch.float64, **kwargs)
    same_random_state(ours, oracle)
    ours.compile(fullgraph=True, backend=COMPILE_BACKEND)  # in place: the same names
    steps_agree(ours, oracle, (4, 5))


def test_far_from_zero_float32_against_float64() -> None:
    """Mean 1e4, std 1e-2, running statistics near: float32 keeps its accuracy, d too.

    Each output is ``xhat0 * s + t`` with ``xhat0`` from sums of ``n`` centred terms
    (``|xhat0|`` and the mean's error in units of sigma_B both count), ``s = weight * r``,
    ``t = bias + weight * d`` (``d`` itself from a sum of ``n`` centred terms).
    """
    ours = BatchRenorm2d(3, momentum=0.1)
    with torch.no_grad():
        ours.running_mean.copy_(1e4 + 1e-2 * torch.randn(3))
        ours.running_var.copy_(1e-4 * (0.5 + torch.rand(3)))
    oracle = references.BatchRenorm2d(3, dtype=torch.float64, momentum=0.1)
    oracle.load_state_dict(ours.state_dict())
    x = 1e4 + 1e-2 * torch.randn(8, 3, 6, 6)
    running_mean_before = ours.running_mean.clone()
    oracle_running_mean_before = oracle.running_mean.clone()
    y, expected = ours(x), oracle(x.double())
    n = x.numel() // 3
    xhat0 = nn.functional.batch_norm(x.double(), None, None, training=True)
    weight = ours.weight.detach().double().abs()
    s = (weight * 3).view(-1, 1, 1)  # |r| <= rmax = 3
    t = (ours.bias.detach().double().abs() + 5 * weight).view(-1, 1, 1)  # |d| <= dmax = 5
    assert_close_sum(y, expected, terms=n, abs_sum=(xhat0.abs() + 1) * s + t, dtype=torch.float32)
    assert_close_sum(ours.running_mean, oracle.running_mean.float(), terms=n, abs_sum=1e4 * 1e-1)
    # d from the rounded means, (mean(x) - running_mean) / sigma in float32, misses
    sigma = (oracle.running_var + oracle.eps).sqrt()
    d_exact = (x.double().mean((0, 2, 3)) - oracle_running_mean_before) / sigma
    d_rounded = (x.mean((0, 2, 3)) - running_mean_before) / sigma.float()
    bound = sum_tolerance(torch.float32, n, 5.0)
    assert float((d_rounded.double() - d_exact).abs().max()) > 10 * bound


def test_bfloat16_computes_in_float32_and_rounds_once(
    same_random_state: Callable[..., None],
) -> None:
    ours = BatchRenorm2d(3, dtype=torch.bfloat16)
    oracle = references.BatchRenorm2d(3, dtype=torch.float64)
    same_random_state(ours)
    oracle.load_state_dict(
        {k: v.double() if v.is_floating_point() else v for k, v in ours.state_dict().items()}
    )
    x = (2 * torch.randn(4, 3, 5, 5) + 1).to(torch.bfloat16)
    y, expected = ours(x), oracle(x.double())
    assert y.dtype == torch.bfloat16
    n = x.numel() // 3
    tolerance = unit_roundoff(torch.bfloat16) * expected.abs() + sum_tolerance(
        torch.float32, n, (expected.abs() + 10) * 10
    )
    assert bool(((y.double() - expected).abs() <= tolerance).all())


def test_state_dict_is_batch_norms_both_ways(same_random_state: Callable[..., None]) -> None:
    ours, bn = BatchRenorm2d(4), nn.BatchNorm2d(4)
    assert list(ours.state_dict()) == list(bn.state_dict())
    same_random_state(bn)
    ours.load_state_dict(bn.state_dict())
    back = nn.BatchNorm2d(4)
    back.load_state_dict(ours.state_dict())
    for key, value in bn.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
    assert repr(BatchRenorm1d(3)) == (
        "BatchRenorm1d(3, eps=1e-05, momentum=0.01, affine=True, bias=True, rmax=3.0, dmax=5.0)"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_features": 0}, r"num_features must be a positive integer, got 0"),
        ({"num_features": 3, "rmax": 0.5}, r"rmax must be at least 1 \(1 is batch norm\)"),
        ({"num_features": 3, "dmax": -1.0}, r"dmax must be non-negative"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchRenorm2d(**kwargs)


def test_wrong_input_dimensions_is_torchs_error() -> None:
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        BatchRenorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        BatchRenorm1d(3)(torch.randn(2, 3, 4, 4))


def test_registry_builds_it_at_every_dimensionality() -> None:
    for dims, cls in ((0, BatchRenorm1d), (1, BatchRenorm1d), (2, BatchRenorm2d)):
        layer = normlab.nn.create_norm_layer("renorm", 6, dims=dims)
        assert type(layer) is cls and layer.num_features == 6
    assert isinstance(normlab.nn.create_norm_layer("renorm", 6, dims=3), BatchRenorm3d)


def test_swa_update_bn_recomputes_its_statistics_as_batch_norms() -> None:
    """Tools find it as a batch norm (torch's _BatchNorm): update_bn resets the running
    statistics and averages them over the batches, the numbers torch.nn's batch norm gets."""
    ours = nn.Sequential(
        nn.Conv2d(2, 3, 3, dtype=torch.float64), BatchRenorm2d(3, dtype=torch.float64)
    )
    theirs = nn.Sequential(
        nn.Conv2d(2, 3, 3, dtype=torch.float64), nn.BatchNorm2d(3, dtype=torch.float64)
    )
    theirs[0].load_state_dict(ours[0].state_dict())
    batches = [torch.randn(4, 2, 6, 6, dtype=torch.float64) * 2 + 1 for _ in range(3)]
    torch.optim.swa_utils.update_bn(batches, ours)
    torch.optim.swa_utils.update_bn(batches, theirs)
    for name in ("running_mean", "running_var"):
        expected = getattr(theirs[1], name)
        assert_close_sum(getattr(ours[1], name), expected, terms=192, abs_sum=expected.abs() * 10)
    assert not torch.equal(ours[1].running_var, torch.ones(3, dtype=torch.float64))
    assert ours[1].momentum == 0.01  # restored
