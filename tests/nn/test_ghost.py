"""GhostBatchNorm1d/2d: one virtual batch is torch.nn's batch norm (float64), several are the
chunks' formula (normlab.testing.references), and the usual proofs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import normlab.nn
from normlab.functional.ghost import ghost_batch_norm
from normlab.nn.ghost import GhostBatchNorm1d, GhostBatchNorm2d
from normlab.testing import references
from normlab.testing.tolerance import assert_close_sum, sum_tolerance, unit_roundoff

COMPILE_BACKEND = "aot_eager" if os.environ.get("ATEN_CPU_CAPABILITY") == "default" else "inductor"


@pytest.mark.parametrize(
    ("cls", "shape"),
    [(GhostBatchNorm1d, (6, 3)), (GhostBatchNorm1d, (5, 3, 4)), (GhostBatchNorm2d, (4, 3, 5, 5))],
)
@pytest.mark.parametrize("kwargs", [{}, {"momentum": None, "affine": False}, {"bias": False}])
def test_one_virtual_batch_is_torch_batch_norm(
    cls: type,
    shape: tuple[int, ...],
    kwargs: dict[str, Any],
    same_random_state: Callable[..., None],
    steps_agree: Callable[..., None],
) -> None:
    ours = cls(3, shape[0], dtype=torch.float64, **kwargs)
    torch_bn = getattr(nn, f"BatchNorm{cls.__name__[-2:]}")(3, dtype=torch.float64, **kwargs)
    same_random_state(ours, torch_bn)
    steps_agree(ours, torch_bn, shape)


@pytest.mark.parametrize(
    ("cls", "shape", "size"),
    [
        (GhostBatchNorm1d, (9, 3), 3),
        (GhostBatchNorm1d, (7, 3, 4), 2),
        (GhostBatchNorm2d, (8, 3, 3, 3), 4),
        (GhostBatchNorm2d, (5, 3, 3, 3), 2),
    ],
)
@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"track_running_stats": False}])
def test_several_virtual_batches_equal_the_formula(
    cls: type,
    shape: tuple[int, ...],
    size: int,
    kwargs: dict[str, Any],
    same_random_state: Callable[..., None],
    steps_agree: Callable[..., None],
) -> None:
    ours = cls(3, size, dtype=torch.float64, **kwargs)
    oracle = getattr(references, cls.__name__)(3, size, dtype=torch.float64, **kwargs)
    same_random_state(ours, oracle)
    steps_agree(ours, oracle, shape)


def test_each_chunk_is_normalised_alone() -> None:
    """Changing one chunk leaves the others' outputs as they were; each chunk is centred."""
    layer = GhostBatchNorm2d(3, 2, dtype=torch.float64, affine=False)
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    y = layer(x)
    x[2:4] = 100 * x[2:4] + 7
    y2 = layer(x)
    assert torch.equal(y[:2], y2[:2]) and torch.equal(y[4:], y2[4:])
    for chunk in y2.split(2):
        assert float(chunk.mean((0, 2, 3)).abs().max()) < sum_tolerance(torch.float64, 32, 32.0)


def test_running_statistics_rule() -> None:
    """momentum 1: the running mean is the batch mean, the running variance the size-weighted
    mean of the chunks' unbiased variances (chunks of 3, 3 and 1 samples)."""
    layer = GhostBatchNorm1d(2, 3, momentum=1.0, dtype=torch.float64)
    x = torch.randn(7, 2, 5, dtype=torch.float64) * torch.tensor([1.0, 3.0]).view(1, 2, 1)
    layer(x)
    chunks = x.split(3)
    expected_var = sum(c.shape[0] * c.var((0, 2)) for c in chunks) / 7
    assert_close_sum(layer.running_mean, x.mean((0, 2)), terms=35, abs_sum=x.abs().sum((0, 2)))
    assert_close_sum(layer.running_var, expected_var, terms=35, abs_sum=expected_var * 10)
    assert not torch.allclose(layer.running_var, x.var((0, 2)))  # not the whole batch's


def test_gradcheck_and_gradgradcheck() -> None:
    w = (0.5 + torch.rand(3, dtype=torch.float64)).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ghost_batch_norm(x, None, None, w, b, True, 0.1, 1e-5, 2)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_compiled_equals_eager(
    same_random_state: Callable[..., None], float32_buffers_agree: Callable[..., None]
) -> None:
    eager = GhostBatchNorm2d(4, 3, momentum=0.2)
    same_random_state(eager)
    compiled_module = GhostBatchNorm2d(4, 3, momentum=0.2)
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, fullgraph=True, backend=COMPILE_BACKEND)
    x = 2 * torch.randn(8, 4, 5, 5)
    y = eager(x)
    n = x.numel() // 4
    assert_close_sum(compiled(x), y, terms=n, abs_sum=y.abs() + 10)
    float32_buffers_agree(compiled_module, eager, terms=n)


@pytest.mark.parametrize(
    ("cls", "shape"), [(GhostBatchNorm1d, (7, 3, 4)), (GhostBatchNorm2d, (8, 3, 3, 3))]
)
def test_compiled_equals_the_formula_in_float64(
    cls: type,
    shape: tuple[int, ...],
    same_random_state: Callable[..., None],
    steps_agree: Callable[..., None],
) -> None:
    """Compiled (the formula with its closed-form backward from saved statistics), chunks
    of 3 with a smaller last one: outputs, gradients and buffers as the chunks' formula."""
    torch._dynamo.reset()
    ours = cls(3, 3, dtype=torch.float64)
    oracle = getattr(references, cls.__name__)(3, 3, dtype=torch.float64)
    same_random_state(ours, oracle)
    ours.compile(fullgraph=True, backend=COMPILE_BACKEND)  # in place: the same names
    steps_agree(ours, oracle, shape)


def test_far_from_zero_float32_against_float64(same_random_state: Callable[..., None]) -> None:
    ours = GhostBatchNorm2d(3, 4)
    oracle = references.GhostBatchNorm2d(3, 4, dtype=torch.float64)
    same_random_state(ours)
    oracle.load_state_dict(ours.state_dict())
    x = 1e4 + 1e-2 * torch.randn(8, 3, 6, 6)
    y, expected = ours(x), oracle(x.double())
    n = 4 * 36  # values per channel and chunk
    weight = ours.weight.detach().double().abs().view(-1, 1, 1)
    assert_close_sum(
        y, expected, terms=n, abs_sum=(expected.abs() + weight) * 10, dtype=torch.float32
    )


def test_bfloat16_computes_in_float32_and_rounds_once(
    same_random_state: Callable[..., None],
) -> None:
    ours = GhostBatchNorm2d(3, 2, dtype=torch.bfloat16)
    same_random_state(ours)
    oracle = references.GhostBatchNorm2d(3, 2, dtype=torch.float64)
    oracle.load_state_dict(
        {k: v.double() if v.is_floating_point() else v for k, v in ours.state_dict().items()}
    )
    x = (2 * torch.randn(4, 3, 5, 5) + 1).to(torch.bfloat16)
    y, expected = ours(x), oracle(x.double())
    assert y.dtype == torch.bfloat16
    tolerance = unit_roundoff(torch.bfloat16) * expected.abs() + sum_tolerance(
        torch.float32, 50, (expected.abs() + 10) * 10
    )
    assert bool(((y.double() - expected).abs() <= tolerance).all())


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_virtual_batch_size_must_be_a_positive_integer(size: object) -> None:
    with pytest.raises(ValueError, match=r"virtual_batch_size must be a positive integer, got"):
        GhostBatchNorm2d(3, size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"virtual_batch_size must be a positive integer, got"):
        ghost_batch_norm(torch.randn(4, 3), None, None, training=True, virtual_batch_size=size)


def test_zero_features_and_one_value_chunks_are_errors() -> None:
    with pytest.raises(ValueError, match=r"num_features must be a positive integer, got 0"):
        GhostBatchNorm1d(0, 4)
    layer = GhostBatchNorm1d(3, 2)
    with pytest.raises(
        ValueError,
        match=r"Expected more than 1 value per channel when training: "
        r"the last virtual batch of a batch of 5 with virtual_batch_size=2",
    ):
        layer(torch.randn(5, 3))
    layer(torch.randn(5, 3, 2))  # one sample of two values: a variance
    layer.eval()(torch.randn(5, 3))  # evaluation: running statistics, no chunks


def test_state_dict_is_batch_norms() -> None:
    ours, bn = GhostBatchNorm2d(4, 8), nn.BatchNorm2d(4)
    assert list(ours.state_dict()) == list(bn.state_dict())
    ours.load_state_dict(bn.state_dict())
    assert repr(ours) == (
        "GhostBatchNorm2d(4, virtual_batch_size=8, eps=1e-05, momentum=0.1, affine=True, "
        "bias=True, track_running_stats=True)"
    )


def test_registry_builds_it() -> None:
    assert type(normlab.nn.create_norm_layer("ghost", 6, dims=0)) is GhostBatchNorm1d
    layer = normlab.nn.create_norm_layer("ghost", 6, dims=2)
    assert type(layer) is GhostBatchNorm2d and layer.virtual_batch_size == 16
    with pytest.raises(ValueError, match="not dims=3"):
        normlab.nn.create_norm_layer("ghost", 6, dims=3)
