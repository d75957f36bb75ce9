"""LeNet's building blocks: the fast 2x2 average pool equals torch's, values and gradients."""

from __future__ import annotations

import pytest
import torch

from normlab.models.lenet import AvgPool2d, LeNet
from normlab.testing.tolerance import assert_close_sum


@pytest.mark.parametrize("shape", [(4, 6, 24, 24), (2, 3, 8, 6), (1, 1, 2, 2)])
def test_fast_pool_equals_avg_pool2d(shape: tuple[int, ...], code_path: str) -> None:
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ours, theirs = AvgPool2d(2, 2)(x), torch.nn.functional.avg_pool2d(x, 2, 2)
    window_sums = torch.nn.functional.avg_pool2d(x.detach().abs(), 2, 2)  # 4 terms |x| / 4
    assert_close_sum(ours, theirs, terms=4, abs_sum=window_sums)
    g = torch.randn_like(ours)
    (dx,) = torch.autograd.grad(ours, x, g)
    (reference,) = torch.autograd.grad(theirs, x, g)
    # not a rounding tolerance: each input's gradient is g / 4, a power of two, so exact
    torch.testing.assert_close(dx, reference, rtol=0, atol=0)


@pytest.mark.parametrize(
    "pool,shape",
    [
        (AvgPool2d(2, 2), (2, 3, 7, 6)),  # odd height: torch's floor mode drops the last row
        (AvgPool2d(3, 2), (2, 3, 8, 8)),  # another window
        (AvgPool2d(2, 2, padding=1), (2, 3, 8, 8)),
        (AvgPool2d(2, 2, divisor_override=3), (2, 3, 8, 8)),
        (AvgPool2d(2, 2), (3, 8, 8)),  # no batch dimension
    ],
)
def test_other_configurations_take_torchs_path(pool: AvgPool2d, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    reference = torch.nn.AvgPool2d(
        pool.kernel_size, pool.stride, pool.padding, divisor_override=pool.divisor_override
    )(x)
    assert torch.equal(pool(x), reference)


def test_the_kernel_pool_has_a_second_derivative() -> None:
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(AvgPool2d(2, 2), (x,))


def test_non_contiguous_input_takes_torchs_path() -> None:
    x = torch.randn(2, 8, 8, 3, dtype=torch.float64).permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    assert torch.equal(AvgPool2d(2, 2)(x), torch.nn.functional.avg_pool2d(x, 2, 2))


def test_lenet_uses_the_fast_pool_and_keeps_the_tutorials_keys() -> None:
    model = LeNet(norm="torch-batch")
    assert isinstance(model.layers[3], AvgPool2d) and isinstance(
        model.layers[3], torch.nn.AvgPool2d
    )
    assert isinstance(LeNet(pool="max").layers[3], torch.nn.MaxPool2d)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert "layers.1.running_mean" in model.state_dict()
