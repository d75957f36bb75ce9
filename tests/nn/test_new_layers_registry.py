"""The registry's names for the layers torch.nn lacks build LeNet's four norm layers and
train: every parameter of every norm layer gets a gradient, and the loss goes down."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab.nn
from normlab.models.lenet import LeNet

NEW_NAMES = [
    "frozen-batch",
    "renorm",
    "ghost",
    "group-ws",
    "frn",
    "evonorm-b0",
    "evonorm-s0",
    "dyt",
]


def test_the_new_names_are_registered_without_torch_twins() -> None:
    names = normlab.nn.norm_names()
    assert set(NEW_NAMES) <= set(names)
    assert not any(f"torch-{name}" in names for name in NEW_NAMES)


@pytest.mark.parametrize("name", NEW_NAMES)
def test_lenet_trains_with_it(name: str) -> None:
    torch.manual_seed(0)
    model = LeNet(norm=name, activation="relu")
    x = torch.randn(32, 1, 28, 28)
    labels = torch.randint(0, 10, (32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        for layer_name, layer in model.norm_layers():
            for parameter_name, parameter in layer.named_parameters():
                assert parameter.grad is not None, (layer_name, parameter_name)
                assert bool(torch.isfinite(parameter.grad).all()), (layer_name, parameter_name)
        optimizer.step()
        losses.append(float(loss))
    assert len(model.norm_layers()) == 4
    assert losses[-1] < losses[0], losses
    model.eval()
    assert bool(torch.isfinite(model(x)).all())
