"""DeepCNN: shapes, the layers each arm builds, He initialisation, the skip, and the
zero-initialised residual block that is the identity at initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normlab.models.deep_cnn import DeepCNN, PreActBlock
from normlab.nn import BatchNorm2d


@pytest.mark.parametrize("depth", [4, 8, 16])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_output_and_trunk_shapes(depth: int, residual: bool, norm: str) -> None:
    model = DeepCNN(depth=depth, residual=residual, norm=norm, num_classes=7)
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 7)
    shapes = []
    hooks = [m.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
             for _, m, _ in model.trunk()]  # fmt: skip
    model(x)
    for handle in hooks:
        handle.remove()
    blocks = depth // 4
    assert shapes == [(3, 16, 14, 14)] * (1 + blocks) + [(3, 32, 7, 7)] * (1 + blocks)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth + 2  # the stages, the stem and the downsampling
    assert [layers for *_, layers in model.trunk()][-1] == depth + 2
    assert all(conv.bias is None for conv in convs)


def test_norm_layers_where_the_arm_asks() -> None:
    with_norm = DeepCNN(depth=8, norm="batch")
    norms = [m for m in with_norm.modules() if isinstance(m, BatchNorm2d)]
    assert len(norms) == 2 * 2 * 2 + 2  # two per block, the downsampling, the head
    without = DeepCNN(depth=8, norm="none")
    assert not any(isinstance(m, BatchNorm2d) for m in without.modules())


def test_he_initialisation() -> None:
    """Every convolution ~ N(0, 2 / fan_in): the sample variance of n weights has a
    relative standard deviation sqrt(2 / n); allowed five of them."""
    model = DeepCNN(depth=16, widths=(32, 32))
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        w = conv.weight.detach().double()
        fan_in = w[0].numel()
        expected = 2.0 / fan_in
        assert abs(w.var().item() / expected - 1) <= 5 * math.sqrt(2.0 / w.numel())


def test_residual_block_adds_its_input_to_the_plain_branch() -> None:
    torch.manual_seed(1)
    residual = PreActBlock(8, "batch", residual=True)
    plain = PreActBlock(8, "batch", residual=False)
    plain.load_state_dict(residual.state_dict())
    x = torch.randn(4, 8, 6, 6)
    assert torch.equal(residual(x), x + plain(x))


@pytest.mark.parametrize("depth", [4, 16])
def test_zero_initialised_residual_blocks_are_the_identity(depth: int) -> None:
    model = DeepCNN(depth=depth, residual=True, norm="none", zero_init_last=True).double()
    x = torch.randn(5, 16, 14, 14, dtype=torch.float64)
    for block in model.stage1:
        assert torch.equal(block(x), x)
    # the whole network is then its stem, downsampling and head alone
    images = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    skipped = model.head(model.down(model.stem(images))).mean(dim=(2, 3))
    assert torch.equal(model(images), model.classifier(skipped))


def test_zero_initialised_block_still_learns() -> None:
    """The zeroed convolution gets a gradient at once (the identity is a start, not a
    fixed point)."""
    model = DeepCNN(depth=4, residual=True, norm="none", zero_init_last=True)
    model(torch.randn(4, 1, 28, 28)).square().sum().backward()
    assert model.stage1[0].branch[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"depth": 6}, "depth must be a positive multiple of 4, got 6"),
        ({"depth": 0}, "depth must be a positive multiple of 4, got 0"),
        ({"widths": (16,)}, r"widths must be 2 positive integers, got \(16,\)"),
        ({"num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ({"norm": "nope"}, "unknown norm layer 'nope'"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeepCNN(**kwargs)
