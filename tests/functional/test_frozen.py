"""frozen_batch_norm's paths: the CPU operator (buffers) and the formula (gradients wanted
for the per-channel tensors), each against torch's evaluation-mode batch norm in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from normlab import kernels
from normlab.functional.frozen import frozen_batch_norm
from normlab.testing.tolerance import assert_close_sum, first_order_sums

needs_kernels = pytest.mark.skipif(kernels.ops() is None, reason="normlab's CPU kernels are off")


def _channel_tensors(c: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """weight, bias, running_mean, running_var off 1, 0, 0 and 1."""
    return (
        (1 + 0.5 * torch.randn(c)).to(dtype),
        (0.5 * torch.randn(c)).to(dtype),
        (3 + torch.randn(c)).to(dtype),
        (0.5 + torch.rand(c)).to(dtype),
    )


def _reference(x: torch.Tensor, tensors: tuple[torch.Tensor, ...], eps: float) -> torch.Tensor:
    weight, bias, mean, var = (t.double() for t in tensors)
    return F.batch_norm(x.double(), mean, var, weight, bias, training=False, eps=eps)


@needs_kernels
@pytest.mark.parametrize(
    ("shape", "channels_last"),
    [((6, 5), False), ((4, 5, 7), False), ((3, 5, 4, 6), False), ((3, 5, 4, 6), True)],
)
def test_operator_equals_eval_batch_norm_and_keeps_the_layout(
    shape: tuple[int, ...], channels_last: bool
) -> None:
    tensors = _channel_tensors(5, torch.float32)
    x = 2 + torch.randn(shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = frozen_batch_norm(x, *tensors, eps=1e-5)
    assert type(y.grad_fn).__name__ == "CppFunction"  # the operator, not the formula
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    expected_x = x.detach().double().requires_grad_(True)
    expected = _reference(expected_x, tensors, 1e-5)
    weight, _, mean, var = (t.double() for t in tensors)
    scale = (weight / (var + 1e-5).sqrt()).view(1, -1, *[1] * (x.dim() - 2))
    # (x - mean) * scale + bias: three roundings, one of each term's size
    centred = x.detach().double() - mean.view_as(scale)
    bound = centred.abs() * scale.abs() + tensors[1].double().view_as(scale).abs()
    assert_close_sum(y, expected, terms=3, abs_sum=bound)
    upstream = torch.randn(shape)
    y.backward(upstream)
    expected.backward(upstream.double())
    assert expected_x.grad is not None
    dx_bound = upstream.double().abs() * scale.abs()
    assert_close_sum(x.grad, expected_x.grad, terms=2, abs_sum=dx_bound)


@needs_kernels
def test_operator_gradcheck_and_gradgradcheck() -> None:
    tensors = _channel_tensors(3, torch.float64)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: frozen_batch_norm(t, *tensors), (x,))
    assert torch.autograd.gradgradcheck(lambda t: frozen_batch_norm(t, *tensors), (x,))


def test_per_channel_tensors_that_want_gradients_get_them_from_the_formula() -> None:
    tensors = tuple(t.requires_grad_(True) for t in _channel_tensors(4, torch.float64))
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    y = frozen_batch_norm(x, *tensors, eps=1e-3)
    assert type(y.grad_fn).__name__ != "CppFunction"
    upstream = torch.randn_like(y)
    exact = tuple(t.detach().clone().requires_grad_(True) for t in (x, *tensors))
    got = torch.autograd.grad(y, (x, *tensors), upstream)
    want = torch.autograd.grad(_formula(*exact), exact, upstream)
    sums = first_order_sums(_formula, exact, upstream)
    for g, w, abs_sum in zip(got, want, sums.grads, strict=True):
        assert_close_sum(g, w, terms=sums.terms, abs_sum=abs_sum)


def _formula(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    """The paper's formula in float64 with eps 1e-3, on (N, C, H, W)."""
    weight, bias, mean, var = (t.view(1, -1, 1, 1) for t in (weight, bias, mean, var))
    return (x - mean) / torch.sqrt(var + 1e-3) * weight + bias
