"""Bytes saved for backward, against closed forms."""

from __future__ import annotations

import torch

from normlab.bench.memory import saved_bytes


class SaveGiven(torch.autograd.Function):
    """Identity forward that saves the tensors it is told to (for the closed forms)."""

    @staticmethod
    def forward(ctx, x, *to_save):  # type: ignore[override]
        ctx.save_for_backward(*to_save)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return (grad, *(None for _ in ctx.saved_tensors))


def test_one_saved_tensor_counts_its_bytes() -> None:
    x = torch.randn(64, 16, requires_grad=True)
    kept = torch.randn(8, 4, dtype=torch.float64)
    assert saved_bytes(lambda: SaveGiven.apply(x, kept)) == 8 * 4 * 8


def test_a_tensor_saved_twice_or_through_a_view_counts_once() -> None:
    x = torch.randn(64, 16, requires_grad=True)
    kept = torch.randn(10, 10)
    assert saved_bytes(lambda: SaveGiven.apply(x, kept, kept, kept[2:5], kept.t())) == 400


def test_distinct_tensors_add_up() -> None:
    x = torch.randn(4, requires_grad=True)
    a, b = torch.zeros(3, dtype=torch.float16), torch.zeros(5, dtype=torch.int64)
    assert saved_bytes(lambda: SaveGiven.apply(x, a, b)) == 3 * 2 + 5 * 8


def test_builtin_ops_are_seen_too() -> None:
    x = torch.randn(64, 16, requires_grad=True)
    assert saved_bytes(lambda: x.sigmoid()) == 64 * 16 * 4  # sigmoid keeps its output
    assert saved_bytes(lambda: x.sigmoid().sigmoid()) == 2 * 64 * 16 * 4


def test_nothing_is_saved_without_inputs_that_need_grad() -> None:
    x = torch.randn(64, 16)
    assert saved_bytes(lambda: x.sigmoid()) == 0
    assert saved_bytes(lambda: x + 1) == 0
