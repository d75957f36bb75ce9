"""replace_norms: every norm of a model becomes the registry's layer, built as the registry
builds it (the oracle: create_norm_layer with the same channels and dims)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab.nn as ours_nn
from normlab.models.lenet import LeNet
from normlab.nn.registry import create_norm_layer, norm_names
from normlab.nn.replace import replace_norms

LENET_NORMS = [("layers.1", 6, 2), ("layers.5", 16, 2), ("layers.10", 120, 0), ("layers.13", 84, 0)]


def _same_layer(actual: nn.Module, expected: nn.Module) -> None:
    assert type(actual) is type(expected)
    assert repr(actual) == repr(expected)
    assert {k: (v.shape, v.dtype) for k, v in actual.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in expected.state_dict().items()
    }


@pytest.mark.parametrize("source", ["batch", "torch-batch", "group", "layer", "instance", "rms"])
@pytest.mark.parametrize("target", ["group", "batch", "torch-layer", "rms", "instance"])
def test_every_norm_of_lenet_becomes_the_registrys_layer(source: str, target: str) -> None:
    example = torch.randn(2, 1, 28, 28)
    model = replace_norms(LeNet(norm=source), target, example_input=example)
    for name, channels, dims in LENET_NORMS:
        _same_layer(model.get_submodule(name), create_norm_layer(target, channels, dims=dims))
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)


@pytest.mark.parametrize("source", ["batch", "torch-batch"])
def test_batch_norm_layers_need_no_example_input(source: str) -> None:
    model = replace_norms(LeNet(norm=source), "group")
    for name, channels, dims in LENET_NORMS:
        _same_layer(model.get_submodule(name), create_norm_layer("group", channels, dims=dims))


def test_device_dtype_training_flag_and_keyword_arguments_carry_over() -> None:
    model = LeNet(norm="torch-batch").double().eval()
    replace_norms(model, "batch", eps=1e-3, momentum=0.01)
    for name, _, _ in LENET_NORMS:
        layer = model.get_submodule(name)
        assert isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)
        assert layer.weight.dtype == torch.float64 and not layer.training
        assert (layer.eps, layer.momentum) == (1e-3, 0.01)


def test_a_single_layer_and_three_dimensional_features() -> None:
    layer = replace_norms(nn.BatchNorm3d(5), "instance")
    _same_layer(layer, create_norm_layer("instance", 5, dims=3))
    conv_1d = nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4))
    replace_norms(conv_1d, "batch", example_input=torch.randn(3, 2, 9))
    _same_layer(conv_1d[1], ours_nn.BatchNorm1d(4))


def test_what_cannot_be_told_is_refused_with_the_way_out() -> None:
    with pytest.raises(ValueError, match="pass example_input"):
        replace_norms(LeNet(norm="group"), "batch")
    with pytest.raises(ValueError, match="unknown norm layer 'batchy'"):
        replace_norms(LeNet(), "batchy")
    tokens = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    with pytest.raises(ValueError, match="channels last"):
        replace_norms(tokens, "batch", example_input=torch.randn(2, 5, 8))


def test_replacing_by_none_removes_every_norm() -> None:
    model = replace_norms(LeNet(norm="batch"), "none")
    assert model.norm_layers() == []
    assert "none" in norm_names()
