"""TrainConfig: the tutorial's defaults, validation messages, JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from normlab.errors import UsageError
from normlab.nn import norm_names
from normlab.train.config import TrainConfig


def test_defaults_are_the_tutorials_settings() -> None:
    # The tutorial: BNLeNetScratch (batch norm before sigmoid, AvgPool2d), SGD(lr=0.03,
    # momentum=0.9), DataLoader(batch_size=64), num_epochs=5, Fashion-MNIST.
    config = TrainConfig()
    assert (config.dataset, config.norm, config.activation, config.pool, config.placement) == (
        "fashion-mnist",
        "batch",
        "sigmoid",
        "avg",
        "before",
    )
    assert (config.lr, config.momentum, config.batch_size, config.epochs) == (0.03, 0.9, 64, 5)
    assert config.train_subset is None and config.test_subset is None
    config.validate()


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


def test_json_round_trip() -> None:
    config = TrainConfig(norm="group", lr=0.5, train_subset=100, seed=3, compile=True)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0  # an int in hand-written JSON is fine
    assert isinstance(TrainConfig.from_dict({"lr": 1}).lr, float)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(UsageError, match=r"unknown config key\(s\) learning_rate; valid keys:"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_unknown_norm_lists_the_valid_names() -> None:
    with pytest.raises(UsageError) as info:
        TrainConfig(norm="batchnorm").validate()
    message = str(info.value)
    assert message.startswith("unknown norm 'batchnorm'; valid: ")
    assert all(name in message for name in norm_names())
    assert "\n" not in message


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"dataset": "cifar10"}, r"unknown dataset 'cifar10'; valid: fashion-mnist, mnist"),
        ({"activation": "swish"}, r"unknown activation 'swish'; valid: sigmoid"),
        ({"pool": "min"}, r"unknown pool 'min'; valid: avg, max"),
        ({"placement": "inside"}, r"unknown placement 'inside'; valid: before, after"),
        ({"lr": 0.0}, r"lr must be positive, got 0.0"),
        ({"lr": -1.0}, r"lr must be positive"),
        ({"lr": float("nan")}, r"lr must be a finite number"),
        ({"lr": float("inf")}, r"lr must be a finite number"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"momentum": -0.1}, r"momentum must be in \[0, 1\)"),
        ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.5}, r"batch_size must be a positive integer"),
        ({"batch_size": True}, r"batch_size must be a positive integer"),
        ({"epochs": 0}, r"epochs must be a positive integer"),
        ({"eval_batch_size": -5}, r"eval_batch_size must be a positive integer"),
        ({"seed": -1}, r"seed must be a non-negative integer"),
        ({"train_subset": 0}, r"train_subset must be a positive integer"),
        ({"test_subset": -3}, r"test_subset must be a positive integer"),
        ({"compile": "yes"}, r"compile must be true or false"),
        ({"device": "gpu"}, r"unknown device 'gpu'; use cpu, cuda, cuda:N or mps"),
    ],
)
def test_bad_values_raise_one_line_errors(changes: dict, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern) as info:
        TrainConfig(**changes).validate()
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_says_so() -> None:
    with pytest.raises(UsageError, match=r"device 'cuda' asked for, but CUDA is not available"):
        TrainConfig(device="cuda").validate()
