"""normlab.functional's batch and instance norm under ``torch.func`` with running
statistics captured from outside the transform, next to torch.nn.functional in float64.

torch.nn.functional updates such buffers inside its kernels, below the transforms; ours
are written by tensor operations, which torch.func refuses on captured tensors unless
they are written below the transforms too (``functional._common.assign_running``). The
output, its derivatives and the updated statistics must be torch's. Tolerances as in
``tests/nn/test_func_transforms.py``: each value sums at most ``T = x.numel()`` terms of
size ``z^2 (1 + max|expected|)`` with ``z = max|x| / std(x)``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad, jacrev, jvp, vmap

import normlab.functional as NF
from normlab.testing.tolerance import assert_close_sum

DT = torch.float64
Norm = Callable[..., Tensor]


def _assert_same(ours: Tensor, theirs: Tensor, x: Tensor) -> None:
    terms = x.numel()
    z = (x.abs().max() / x.std()).item()
    bound = z * z * (1.0 + theirs.abs().max().item())
    assert_close_sum(ours, theirs, terms=terms, abs_sum=terms * bound, dtype=DT)


def _state() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Running mean and variance, weight and bias for 3 channels."""
    return (
        torch.randn(3, dtype=DT) * 0.5,
        torch.rand(3, dtype=DT) + 0.5,
        torch.rand(3, dtype=DT) + 0.5,
        torch.randn(3, dtype=DT),
    )


def _batch_norm(module: object) -> Norm:
    return lambda x, rm, rv, w, b: module.batch_norm(x, rm, rv, w, b, training=True)


def _instance_norm(module: object) -> Norm:
    return lambda x, rm, rv, w, b: module.instance_norm(x, rm, rv, w, b, use_input_stats=True)


NORMS = {"batch_norm": _batch_norm, "instance_norm": _instance_norm}


def _transform(kind: str, norm: Norm, x: Tensor, state: tuple[Tensor, ...]) -> Tensor:
    """One transform of ``x -> norm(x, *state)``, the running statistics captured."""
    rm, rv, w, b = state

    def call(x: Tensor) -> Tensor:
        return norm(x, rm, rv, w, b)

    if kind == "grad":
        cotangent = torch.linspace(-1, 1, x.numel(), dtype=DT).view(x.shape)
        return grad(lambda x: (call(x) * cotangent).sum())(x)
    if kind == "jacrev":
        return jacrev(call)(x)
    return jvp(call, (x,), (torch.ones_like(x),))[1]


@pytest.mark.parametrize("kind", ["grad", "jacrev", "jvp"])
@pytest.mark.parametrize("name", sorted(NORMS))
def test_captured_running_statistics_move_as_torch(code_path: str, name: str, kind: str) -> None:
    x = torch.randn(4, 3, 5, dtype=DT) * 2 + 1
    state = _state()
    initial_mean = state[0].clone()
    ours_state = tuple(t.clone() for t in state)
    ours = _transform(kind, NORMS[name](NF), x, ours_state)
    theirs = _transform(kind, NORMS[name](F), x, state)
    _assert_same(ours, theirs, x)
    for mine, reference in zip(ours_state[:2], state[:2], strict=True):
        _assert_same(mine, reference, x)
    assert not torch.equal(ours_state[0], initial_mean)  # they moved


@pytest.mark.parametrize("name", sorted(NORMS))
def test_vmap_into_unbatched_running_statistics_is_refused_like_torch(name: str) -> None:
    """Samples batched by ``vmap`` cannot move one unbatched buffer: a RuntimeError, as
    torch's, whose one line says what to do instead; the buffers are left as they were."""
    xs = torch.randn(2, 4, 3, 5, dtype=DT)
    for module in (F, NF):
        rm, rv, w, b = _state()
        before = rm.clone()
        with pytest.raises(RuntimeError) as error:
            vmap(lambda x: NORMS[name](module)(x, rm, rv, w, b))(xs)  # noqa: B023
        assert torch.equal(rm, before)
    assert "track_running_stats=False" in str(error.value).splitlines()[0]
