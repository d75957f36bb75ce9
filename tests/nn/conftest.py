"""Helpers shared by the tests of batch norm's variants (ghost batch norm, batch renorm):
each is a fixture that returns the function, as the suite's ``check_png`` does."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from normlab.testing.tolerance import assert_close_sum


def load_same_random_state(*modules: nn.Module) -> None:
    """The same parameters and running statistics off 1 and 0 in every module (the state
    keys of the first module, which all share)."""
    state = {}
    for name, tensor in modules[0].state_dict().items():
        if name == "num_batches_tracked":
            state[name] = tensor
        elif name.endswith(("weight", "running_var")):
            state[name] = 0.5 + torch.rand_like(tensor)
        else:
            state[name] = 0.3 * torch.randn_like(tensor)
    for module in modules:
        module.load_state_dict(state)


def assert_steps_agree(
    ours: nn.Module, oracle: nn.Module, shape: tuple[int, ...], scale: float = 1.5
) -> None:
    """Three training steps and an eval step on float64 inputs of ``shape`` (standard
    deviation ``scale``, mean 0.5): outputs, all gradients and buffers agree."""
    for step in range(4):
        ours.train(step < 3)
        oracle.train(step < 3)
        x = scale * torch.randn(shape, dtype=torch.float64) + 0.5
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y1, y2 = ours(x1), oracle(x2)
        n = x.numel() // x.shape[1]
        assert_close_sum(y1, y2, terms=n, abs_sum=y2.abs() + 10)
        upstream = torch.randn_like(y2)
        y1.backward(upstream)
        y2.backward(upstream)
        bound = n * upstream.abs().max() * 10
        assert_close_sum(x1.grad, x2.grad, terms=n, abs_sum=bound)
        theirs = dict(oracle.named_parameters())
        for name, p in ours.named_parameters():
            assert_close_sum(p.grad, theirs[name].grad, terms=n, abs_sum=bound)
        theirs_buffers = dict(oracle.named_buffers())
        for name, b in ours.named_buffers():
            if name == "num_batches_tracked":
                assert torch.equal(b, theirs_buffers[name])
            else:
                assert_close_sum(b, theirs_buffers[name], terms=n, abs_sum=b.abs() * 10)


def assert_float32_buffers_agree(ours: nn.Module, expected: nn.Module, terms: int) -> None:
    """Each float32 buffer of ``ours`` equals ``expected``'s within the rounding of sums of
    ``terms`` values (``num_batches_tracked``, an integer, exactly)."""
    state = ours.state_dict()
    for name, buffer in expected.named_buffers():
        assert_close_sum(
            state[name].double(),
            buffer.double(),
            terms=terms,
            abs_sum=buffer.abs() * 10,
            dtype=torch.float32,
        )


@pytest.fixture
def same_random_state() -> Callable[..., None]:
    return load_same_random_state


@pytest.fixture
def steps_agree() -> Callable[..., None]:
    return assert_steps_agree


@pytest.fixture
def float32_buffers_agree() -> Callable[..., None]:
    return assert_float32_buffers_agree
