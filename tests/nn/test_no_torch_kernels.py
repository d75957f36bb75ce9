"""None of normlab's layers calls torch's normalization kernels, forward or backward.

Two independent guards, both active while every configuration of the parity grid runs a
training step and an evaluation step (forward and backward):

1. the Python entry points (``torch.batch_norm``, ``F.layer_norm``, ...) are replaced by
   functions that raise;
2. a ``TorchDispatchMode`` sees every aten operator that runs, including those the autograd
   engine runs for the backward, and raises on any whose name contains ``norm``, except
   :data:`ALLOWED`. normlab's own compiled kernels (``torch.ops.normlab.*``, from
   ``src/normlab/kernels``) are ours, not torch's, and pass.

Positive controls show that each guard does catch ``torch.nn``'s own layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import normlab.nn
from normlab.testing import parity

#: aten operators with "norm" in their name that are not normalization kernels: the
#: vector 2-norm (sqrt of a sum of squares), a plain reduction used for sums of squares.
ALLOWED = frozenset({"linalg_vector_norm"})

#: Python entry points of torch's normalization kernels (the aten operators themselves,
#: ``torch.ops.aten.*``, are left to the dispatch guard: torch's own lazy imports use them).
ENTRY_POINTS: list[tuple[Any, str]] = [
    (F, "batch_norm"),
    (F, "instance_norm"),
    (F, "layer_norm"),
    (F, "group_norm"),
    (F, "rms_norm"),
    (F, "local_response_norm"),
    (torch, "batch_norm"),
    (torch, "native_batch_norm"),
    (torch, "_native_batch_norm_legit"),
    (torch, "_batch_norm_impl_index"),
    (torch, "batch_norm_stats"),
    (torch, "batch_norm_elemt"),
    (torch, "batch_norm_gather_stats_with_counts"),
    (torch, "instance_norm"),
    (torch, "layer_norm"),
    (torch, "native_layer_norm"),
    (torch, "group_norm"),
    (torch, "native_group_norm"),
    (torch, "rms_norm"),
    (torch, "_fused_rms_norm"),
]


class TorchKernelCalled(Exception):
    """Raised by the guards; never raised by normlab itself."""


class NoNormKernels(TorchDispatchMode):
    """Raise on any aten op whose name contains ``norm`` (except :data:`ALLOWED`)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        namespace, name = func._schema.name.split("::")
        self.seen.add(func._schema.name)
        if namespace == "aten" and "norm" in name and name not in ALLOWED:
            raise TorchKernelCalled(f"torch normalization kernel aten::{name} was called")
        return func(*args, **(kwargs or {}))


@contextmanager
def entry_points_raise(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def make(name: str) -> Any:
        def guard(*args: Any, **kwargs: Any) -> Any:
            raise TorchKernelCalled(f"torch normalization entry point {name} was called")

        return guard

    with monkeypatch.context() as patch:
        for owner, name in ENTRY_POINTS:
            if hasattr(owner, name):
                patch.setattr(owner, name, make(f"{getattr(owner, '__name__', owner)}.{name}"))
        yield


def _train_and_eval(module: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """A training step then an evaluation step, each forward and backward."""
    for training in (True, False):
        module.train(training)
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        y = module(x)
        y.backward(torch.randn_like(y))
        assert x.grad is not None and torch.isfinite(x.grad).all()


def _build(config: parity.Config) -> torch.nn.Module:
    return config.build(normlab.nn, torch.float64, torch.device("cpu"))


def test_the_entry_points_exist() -> None:
    """The guard list is not stale: the main entry points exist in this torch."""
    for owner, name in ENTRY_POINTS[:12] + ENTRY_POINTS[14:19]:
        assert hasattr(owner, name), name


@pytest.mark.parametrize("config", parity.GRID, ids=lambda c: c.name)
def test_no_normalization_kernel_is_called(
    config: parity.Config, monkeypatch: pytest.MonkeyPatch, code_path: str
) -> None:
    module = _build(config)
    guard = NoNormKernels()
    with entry_points_raise(monkeypatch), guard:
        _train_and_eval(module, config.input_shape)
    # the guard really watched: forward and backward arithmetic went through it
    assert {"aten::mul", "aten::sum", "normlab::batch_norm_forward"} & guard.seen, guard.seen
    torch_norms = {n.split("::")[1] for n in guard.seen if n.startswith("aten::") and "norm" in n}
    assert not torch_norms - ALLOWED


def test_every_layer_class_is_covered() -> None:
    covered = {config.layer for config in parity.GRID}
    classes = {
        name
        for name in normlab.nn.__all__
        if isinstance(getattr(normlab.nn, name), type)
        and issubclass(getattr(normlab.nn, name), torch.nn.Module)
    }
    assert classes <= covered


# ---------------------------------------------------------------------------------------------
# Positive controls: the same guards catch torch.nn's layers
# ---------------------------------------------------------------------------------------------

TORCH_LAYERS = [
    (torch.nn.BatchNorm2d(3), (4, 3, 5, 5)),
    (torch.nn.InstanceNorm1d(3, affine=True), (2, 3, 6)),
    (torch.nn.LayerNorm(5), (4, 5)),
    (torch.nn.GroupNorm(2, 4), (3, 4, 5)),
    (torch.nn.RMSNorm(5), (4, 5)),
]


@pytest.mark.parametrize("layer,shape", TORCH_LAYERS[:4], ids=lambda v: type(v).__name__)
def test_dispatch_guard_catches_torch_forward(layer: torch.nn.Module, shape: tuple) -> None:
    with NoNormKernels(), pytest.raises(TorchKernelCalled, match="aten::"):
        layer(torch.randn(shape))


@pytest.mark.parametrize("layer,shape", TORCH_LAYERS[:4], ids=lambda v: type(v).__name__)
def test_dispatch_guard_catches_torch_backward(layer: torch.nn.Module, shape: tuple) -> None:
    """The forward runs unguarded; the guard alone catches the backward kernel."""
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    with NoNormKernels(), pytest.raises(TorchKernelCalled, match="backward"):
        y.backward(torch.randn_like(y))


@pytest.mark.parametrize("layer,shape", TORCH_LAYERS, ids=lambda v: type(v).__name__)
def test_entry_point_guard_catches_torch(
    layer: torch.nn.Module, shape: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    with entry_points_raise(monkeypatch), pytest.raises(TorchKernelCalled, match="entry point"):
        layer(torch.randn(shape))


def test_local_response_norm_guard_catches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's LRN (avg_pool) and, on CPU under a dispatch mode, RMS norm (pow, mean) are
    plain arithmetic at the aten level, so for them the entry-point guard is the one that
    shows a call to torch's implementation."""
    with entry_points_raise(monkeypatch), pytest.raises(TorchKernelCalled):
        torch.nn.LocalResponseNorm(2)(torch.randn(2, 4, 3))
