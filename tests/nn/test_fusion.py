"""Fusion of batch norm into the layer before it, against torch.nn.utils.fusion (the oracle)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules import batchnorm as torch_batchnorm
from torch.nn.utils import fusion as torch_fusion

import normlab.nn as ours_nn
from normlab.models.lenet import LeNet
from normlab.nn.fusion import fuse_batch_norms, fuse_conv_bn_eval, fuse_linear_bn_eval
from normlab.testing.tolerance import assert_close_sum, unit_roundoff


def _trained_stats(bn: nn.Module) -> nn.Module:
    """Non-trivial statistics and affine parameters, the layer in evaluation mode."""
    with torch.no_grad():
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.25, 4)
        if bn.weight is not None:
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    return bn.eval()


LIBS = [pytest.param(ours_nn, id="normlab"), pytest.param(nn, id="torch")]


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize(
    ("conv", "bn_name"),
    [
        (lambda: nn.Conv2d(3, 6, 3), "BatchNorm2d"),
        (lambda: nn.Conv2d(4, 6, 3, groups=2, bias=False), "BatchNorm2d"),
        (lambda: nn.Conv1d(3, 5, 2), "BatchNorm1d"),
        (lambda: nn.Conv3d(2, 4, 2), "BatchNorm3d"),
        (lambda: nn.ConvTranspose2d(3, 6, 3), "BatchNorm2d"),
    ],
    ids=["conv2d", "grouped no bias", "conv1d", "conv3d", "transposed"],
)
def test_conv_fusion_gives_torchs_weights(lib: object, conv: object, bn_name: str) -> None:
    layer = conv().double().eval()  # type: ignore[operator]
    bn = _trained_stats(getattr(lib, bn_name)(6 if "2d" in bn_name else layer.out_channels))
    bn = bn.double()
    ours = fuse_conv_bn_eval(layer, bn)
    theirs = torch_fusion.fuse_conv_bn_eval(layer, bn, transpose=layer.transposed)
    # each fused value is a product of three or four factors: a few roundings each
    scale = (bn.weight.abs() + 1) * (bn.running_var + bn.eps).rsqrt()
    bound = 8 * unit_roundoff(torch.float64)
    assert (ours.weight - theirs.weight).abs().max() <= bound * (
        layer.weight.abs().max() * scale.max()
    )
    bias_size = (bn.running_mean.abs() + bn.bias.abs() + 1).max() * scale.max()
    assert (ours.bias - theirs.bias).abs().max() <= bound * bias_size
    assert type(ours) is type(layer) and ours is not layer


def test_grouped_transposed_conv_fuses_each_groups_channels() -> None:
    """(in, out / groups, *k) weights: the output channel of a row depends on its group."""
    conv = nn.ConvTranspose2d(4, 6, 3, groups=2).double().eval()
    bn = _trained_stats(ours_nn.BatchNorm2d(6).double())
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    expected = bn(conv(x))
    # each output sums 4 / 2 * 9 products of the input and the weight
    terms = 2 * 9
    abs_sum = torch.nn.functional.conv_transpose2d(x.abs(), conv.weight.abs(), groups=2)
    scale = (bn.weight.abs() * (bn.running_var + bn.eps).rsqrt()).view(1, -1, 1, 1)
    assert_close_sum(
        fuse_conv_bn_eval(conv, bn)(x), expected, terms=terms, abs_sum=(abs_sum + 1) * scale + 3
    )


@pytest.mark.parametrize("lib", LIBS)
def test_linear_fusion_gives_torchs_weights(lib: object) -> None:
    linear = nn.Linear(5, 4).double().eval()
    bn = _trained_stats(lib.BatchNorm1d(4).double())  # type: ignore[attr-defined]
    ours, theirs = fuse_linear_bn_eval(linear, bn), torch_fusion.fuse_linear_bn_eval(linear, bn)
    scale = bn.weight.abs() * (bn.running_var + bn.eps).rsqrt()
    bound = 8 * unit_roundoff(torch.float64)
    assert (
        ours.weight - theirs.weight
    ).abs().max() <= bound * linear.weight.abs().max() * scale.max()
    bias_size = (
        bn.running_mean.abs() + linear.bias.abs()
    ).max() * scale.max() + bn.bias.abs().max()
    assert (ours.bias - theirs.bias).abs().max() <= bound * bias_size


def test_fusion_refuses_what_cannot_be_folded() -> None:
    linear = nn.Linear(5, 4).eval()
    with pytest.raises(ValueError, match="evaluation"):
        fuse_linear_bn_eval(linear, ours_nn.BatchNorm1d(4))  # training mode
    with pytest.raises(ValueError, match="no running statistics"):
        fuse_linear_bn_eval(linear, ours_nn.BatchNorm1d(4, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="4 outputs"):
        fuse_linear_bn_eval(linear, ours_nn.BatchNorm1d(3).eval())
    with pytest.raises(TypeError, match="batch norm"):
        fuse_linear_bn_eval(linear, ours_nn.LayerNorm(4).eval())


def _trained_lenet(norm: str) -> LeNet:
    """A LeNet whose batch norms hold statistics of a few batches (float64)."""
    model = LeNet(norm=norm).double()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 1, 28, 28, dtype=torch.float64))
    return model.eval()


@pytest.mark.parametrize("norm", ["batch", "torch-batch"])
def test_fused_lenet_predicts_as_unfused(norm: str) -> None:
    model = _trained_lenet(norm)
    fused = fuse_batch_norms(model)
    assert not any(isinstance(m, torch_batchnorm._BatchNorm) for m in fused.modules())
    assert sum(isinstance(m, torch_batchnorm._BatchNorm) for m in model.modules()) == 4
    assert type(fused) is LeNet and not fused.training
    x = torch.randn(256, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        expected, actual = model(x), fused(x)
    # every layer's rounding, propagated through sigmoids (slope <= 1/4) and pooling, is
    # bounded by the largest dot product: 256 terms, each below the weights' magnitude
    largest = max(
        m.weight.abs().sum(1).max().item() for m in model.modules() if isinstance(m, nn.Linear)
    )
    assert_close_sum(actual, expected, terms=256, abs_sum=4 * largest)
    assert torch.equal(actual.argmax(1), expected.argmax(1))


def test_fuse_batch_norms_refuses_training_mode_and_leaves_the_model_alone() -> None:
    model = _trained_lenet("batch")
    model.layers[1].train()
    with pytest.raises(ValueError, match=r"layers\.1 is in training mode; call model\.eval\(\)"):
        fuse_batch_norms(model)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse_batch_norms(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _Block(nn.Module):
    """A residual block with a custom forward: conv-bn pairs found by tracing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), ours_nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.bn3 = ours_nn.BatchNorm2d(4)  # after a sum: not foldable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.bn3(self.bn2(self.conv2(y)) + x)


def test_traced_model_folds_pairs_and_keeps_a_norm_after_a_sum() -> None:
    block = _Block().double()
    with torch.no_grad():
        block(torch.randn(8, 4, 6, 6, dtype=torch.float64))
    block.eval()
    fused = fuse_batch_norms(block)
    assert isinstance(fused.bn1, nn.Identity) and isinstance(fused.bn2, nn.Identity)
    assert isinstance(fused.bn3, ours_nn.BatchNorm2d)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        expected, actual = block(x), fused(x)
    assert_close_sum(actual, expected, terms=2 * 36, abs_sum=20 * (x.abs().max() + 1))


def test_frozen_batch_norm_is_folded_in_any_mode() -> None:
    model = LeNet(norm="frozen-batch").double()
    for name in ("layers.1", "layers.5"):
        layer = model.get_submodule(name)
        layer.load_state_dict(
            _trained_stats(nn.BatchNorm2d(layer.num_features).double()).state_dict(), strict=False
        )
    model.eval()
    fused = fuse_batch_norms(model)
    assert not any(isinstance(m, ours_nn.FrozenBatchNorm2d) for m in fused.layers[:8])
    x = torch.randn(16, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        expected, actual = model(x), fused(x)
    largest = max(
        m.weight.abs().sum(1).max().item() for m in model.modules() if isinstance(m, nn.Linear)
    )
    assert_close_sum(actual, expected, terms=256, abs_sum=4 * largest)
    conv = nn.Conv2d(1, 6, 5).double()  # training mode: refused, even with a frozen norm
    with pytest.raises(ValueError, match="evaluation"):
        fuse_conv_bn_eval(conv, model.layers[1])
