"""normlab.nn.BatchNorm1d/2d/3d against torch.nn (the oracle): numbers, state, errors, memory."""

from __future__ import annotations

import inspect
import itertools
import os
import warnings

import pytest
import torch
from torch import nn

import normlab.nn as ours_nn
from normlab.testing.graph import autograd_nodes
from normlab.testing.tolerance import assert_close_sum, normalization_sums, sum_tolerance

CASES = [  # (class name, input shape)
    ("BatchNorm1d", (6, 3)),
    ("BatchNorm1d", (4, 3, 5)),
    ("BatchNorm2d", (4, 3, 5, 2)),
    ("BatchNorm3d", (2, 3, 2, 3, 2)),
]
CONFIGS = list(
    itertools.product(
        [True, False],  # affine
        [True, False],  # track_running_stats
        [0.1, None, 0.0],  # momentum
    )
)


def _pair(name: str, dtype: torch.dtype, **kwargs: object) -> tuple[nn.Module, nn.Module]:
    """The same layer from normlab and from torch.nn, with the same non-trivial parameters."""
    ours = getattr(ours_nn, name)(3, dtype=dtype, **kwargs)
    ref = getattr(nn, name)(3, dtype=dtype, **kwargs)
    with torch.no_grad():
        for m in (ours, ref):
            if m.weight is not None:
                m.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
            if m.bias is not None:
                m.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    return ours, ref


def _step(m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Forward and backward of a weighted sum; returns output, grads and buffers."""
    x = x.clone().requires_grad_()
    y = m(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)
    (y * weights).sum().backward()
    result = [y.detach(), x.grad]
    result += [p.grad.clone() for p in m.parameters()]
    result += [b.clone() for b in m.buffers()]
    m.zero_grad()
    return result


def _compare_steps(
    ours: nn.Module, ref: nn.Module, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    """Three training steps, then one evaluation step: everything equal within the rounding
    bound of the per-channel reductions (``_step_sums``)."""
    g = torch.Generator().manual_seed(0)
    buffer_sums = torch.zeros(2, shape[1], dtype=torch.float64)
    for step in range(4):
        ours.train(step < 3)
        ref.train(step < 3)
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(dtype)
        a, b = _step(ours, x), _step(ref, x)
        assert len(a) == len(b)
        terms, sums, buffer_sums = _step_sums(ref, x, buffer_sums)
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            if not u.is_floating_point():  # num_batches_tracked
                assert torch.equal(u, v), f"step {step}, item {i}"
                continue
            assert_close_sum(u, v, terms=terms, abs_sum=sums[i])


def _step_sums(
    ref: nn.Module, x: torch.Tensor, buffer_sums: torch.Tensor
) -> tuple[int, list[torch.Tensor], torch.Tensor]:
    """(values per channel, ``sum |terms|`` of each value ``_step`` returns, the running
    statistics' sums so far): training normalizes by the batch's statistics
    (``normalization_sums``), evaluation by the running ones (one term per value); every
    update adds ``|x|`` (the mean) and ``(x - mean)^2`` with its first-order move (the
    variance) to the buffers' sums. ``buffer_sums``: shape ``(2, C)``."""
    c = x.shape[1]
    rows = x.double().transpose(0, 1).reshape(c, -1)
    y_weights = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).view(x.shape)
    grads = y_weights.double().transpose(0, 1).reshape(c, -1)
    weight = None if ref.weight is None else ref.weight.detach().double().abs()[:, None]
    w = torch.ones(c, 1, dtype=torch.float64) if weight is None else weight
    if ref.training or ref.running_var is None:
        sums = normalization_sums(rows, grads, ref.eps, weight=weight)
        output, grad_input, weight_terms = sums.output, sums.grad_input, sums.weight_terms
    else:
        sigma = (ref.running_var.double()[:, None] + ref.eps).sqrt()
        condition = (rows.abs() + ref.running_mean.double().abs()[:, None]) / sigma
        output, grad_input, weight_terms = (
            w * condition,
            w * grads.abs() / sigma,
            grads.abs() * condition,
        )
    if ref.bias is not None:
        output = output + ref.bias.detach().double().abs()[:, None]
    as_x = lambda t: t.reshape(c, x.shape[0], *x.shape[2:]).transpose(0, 1)  # noqa: E731
    result = [as_x(output), as_x(grad_input)]
    if ref.weight is not None:
        result += [weight_terms.sum(1), grads.abs().sum(1)]
    if ref.running_var is not None:
        if ref.training:
            centred = (rows - rows.mean(1, keepdim=True)).abs()
            mean_terms = rows.abs().mean(1, keepdim=True)
            variance = (centred * (centred + 2 * mean_terms)).mean(1) * 2  # n / (n - 1) <= 2
            buffer_sums = buffer_sums + torch.stack([mean_terms[:, 0], variance])
        initial = torch.tensor([[0.0], [1.0]], dtype=torch.float64)  # torch's initial buffers
        result += list(buffer_sums + initial)
    return rows.shape[1], result, buffer_sums


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "shape"), CASES)
@pytest.mark.parametrize(("affine", "track", "momentum"), CONFIGS)
def test_matches_torch_over_training_and_eval(
    dtype: torch.dtype,
    name: str,
    shape: tuple[int, ...],
    affine: bool,
    track: bool,
    momentum: float | None,
) -> None:
    kwargs = {"affine": affine, "track_running_stats": track, "momentum": momentum}
    ours, ref = _pair(name, dtype, **kwargs)
    _compare_steps(ours, ref, shape, dtype)


def test_bias_false_matches_torch() -> None:
    ours, ref = _pair("BatchNorm2d", torch.float64, bias=False)
    assert ours.bias is None
    _compare_steps(ours, ref, (4, 3, 2, 2), torch.float64)


def test_half_input_with_float32_parameters_like_torch() -> None:
    ours, ref = _pair("BatchNorm2d", torch.float32)
    x = torch.randn(8, 3, 4, 4).half()
    y, y_ref = ours(x), ref(x)
    assert y.dtype == torch.float16 and ours.running_var.dtype == torch.float32
    # float32 statistics of 8 * 16 values, then the output rounded to half once
    rows = x.double().transpose(0, 1).reshape(3, -1)
    sums = normalization_sums(rows, torch.zeros_like(rows), ref.eps)
    output = sums.output.reshape(3, 8, 4, 4).transpose(0, 1)
    bound = sum_tolerance(torch.float32, 128, output) + sum_tolerance(torch.float16, 1, output)
    assert bool(((y.double() - y_ref.double()).abs() <= bound).all())
    centred = (rows - rows.mean(1, keepdim=True)).abs()
    variance = (centred * (centred + 2 * rows.abs().mean(1, keepdim=True))).mean(1)
    var_sum = 0.9 + 0.1 * variance * 128 / 127  # momentum 0.1 from torch's initial 1
    assert_close_sum(ours.running_var, ref.running_var, terms=128, abs_sum=var_sum)


# ---------------------------------------------------------------------------------------------
# State: signatures, parameters, buffers, state_dict, repr
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"])
def test_constructor_signature_equals_torch(name: str) -> None:
    ours, ref = inspect.signature(getattr(ours_nn, name)), inspect.signature(getattr(nn, name))
    assert list(ours.parameters) == list(ref.parameters)
    for p in ref.parameters:
        assert ours.parameters[p].default == ref.parameters[p].default
        assert ours.parameters[p].kind == ref.parameters[p].kind


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"affine": False},
        {"track_running_stats": False},
        {"momentum": None, "eps": 1e-3},
        {"bias": False},
        {"dtype": torch.float64},
    ],
)
def test_state_dict_loads_both_ways_and_repr_matches(kwargs: dict[str, object]) -> None:
    ref = nn.BatchNorm2d(3, **kwargs)
    dtype = kwargs.get("dtype", torch.float32)
    with torch.no_grad():  # non-default state everywhere
        ref(torch.randn(4, 3, 2, 2, dtype=dtype))  # type: ignore[arg-type]
        for p in ref.parameters():
            p.add_(torch.rand_like(p))
    ours = ours_nn.BatchNorm2d(3, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert repr(ours) == repr(ref) and ours.extra_repr() == ref.extra_repr()
    ours.load_state_dict(ref.state_dict())
    back = nn.BatchNorm2d(3, **kwargs)
    back.load_state_dict(ours.state_dict())
    for key, value in ref.state_dict().items():
        assert ours.state_dict()[key].dtype == value.dtype
        # not a rounding tolerance: a state_dict round trip copies, bit for bit
        torch.testing.assert_close(back.state_dict()[key], value, rtol=0, atol=0)


def test_old_state_dict_without_num_batches_tracked_loads_like_torch() -> None:
    ref = nn.BatchNorm1d(3)
    ref(torch.randn(5, 3))
    state = ref.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1  # type: ignore[attr-defined]
    for m in (ours_nn.BatchNorm1d(3), nn.BatchNorm1d(3)):
        m.num_batches_tracked.fill_(7)
        m.load_state_dict(state)  # strict: the missing key is filled in, as torch does
        assert m.num_batches_tracked.item() == 7
        torch.testing.assert_close(m.running_mean, ref.running_mean)


def test_parameters_and_buffers_follow_torch() -> None:
    ours, ref = ours_nn.BatchNorm3d(5, dtype=torch.float64), nn.BatchNorm3d(5, dtype=torch.float64)
    for (n1, t1), (n2, t2) in zip(
        itertools.chain(ours.named_parameters(), ours.named_buffers()),
        itertools.chain(ref.named_parameters(), ref.named_buffers()),
        strict=True,
    ):
        assert n1 == n2 and t1.dtype == t2.dtype and t1.shape == t2.shape
        torch.testing.assert_close(t1, t2)
    ours.running_mean.add_(1)
    ours.num_batches_tracked.add_(3)
    ours.weight.data.mul_(4)
    ours.reset_parameters()
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.weight, ref.weight)
    assert ours.num_batches_tracked.item() == 0
    assert ours.num_batches_tracked.dtype == torch.long


# ---------------------------------------------------------------------------------------------
# Behaviour: errors, empty batches, train/eval
# ---------------------------------------------------------------------------------------------


def _torch_message(fn: object) -> str:
    with pytest.raises(ValueError) as info:
        fn()  # type: ignore[operator]
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("BatchNorm1d", (2, 3, 4, 5)),
        ("BatchNorm1d", (3,)),
        ("BatchNorm2d", (2, 3, 4)),
        ("BatchNorm3d", (2, 3, 4, 5)),
        ("BatchNorm1d", (1, 3)),  # one value per channel in training
        ("BatchNorm2d", (1, 3, 1, 1)),
    ],
)
def test_errors_equal_torch(name: str, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    expected = _torch_message(lambda: getattr(nn, name)(3)(x))
    with pytest.raises(ValueError) as info:
        getattr(ours_nn, name)(3)(x)
    assert str(info.value) == expected


@pytest.mark.parametrize("momentum", [0.1, None])
def test_empty_batch_like_torch(momentum: float | None) -> None:
    ours, ref = _pair("BatchNorm2d", torch.float32, momentum=momentum)
    a, b = _step(ours, torch.randn(0, 3, 4, 4)), _step(ref, torch.randn(0, 3, 4, 4))
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v)
    assert ours.num_batches_tracked.item() == 1  # counted, as torch does


def test_grad_mode_does_not_decide_train_or_eval() -> None:
    ours, ref = _pair("BatchNorm2d", torch.float32)
    x = torch.randn(8, 3, 4, 4) * 3 + 2
    with torch.no_grad():  # training mode without grad: batch statistics, buffers updated
        torch.testing.assert_close(ours(x), ref(x))
    assert ours.num_batches_tracked.item() == 1
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    ours.eval()
    ref.eval()
    x.requires_grad_()  # evaluation mode with grad: running statistics, buffers frozen
    torch.testing.assert_close(ours(x), ref(x))
    assert ours.num_batches_tracked.item() == 1


def test_eval_without_running_stats_uses_batch_stats() -> None:
    m = ours_nn.BatchNorm1d(3, track_running_stats=False).eval()
    x = torch.randn(16, 3) * 5 + 3
    y = m(x)
    rows = x.double().t()
    output = normalization_sums(rows, torch.zeros_like(rows), m.eps).output
    # y's rounding, then the mean's: two sums of 16 terms of y's magnitudes
    assert_close_sum(y.mean(0), torch.zeros(3), terms=16, abs_sum=2 * output.mean(1))


# ---------------------------------------------------------------------------------------------
# Memory: flat over hundreds of steps
# ---------------------------------------------------------------------------------------------


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def test_memory_stays_flat_over_hundreds_of_steps() -> None:
    torch.manual_seed(0)
    scale = nn.Parameter(torch.ones(1, 6, 1, 1))  # something before the norm that learns
    bn = ours_nn.BatchNorm2d(6)
    opt = torch.optim.SGD([scale, *bn.parameters()], lr=0.01)
    x = torch.randn(32, 6, 12, 12)
    rss = []
    for step in range(300):
        loss = bn(x * scale).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            assert autograd_nodes(bn.buffers()) == []
            assert all(b.grad_fn is None and not b.requires_grad for b in bn.buffers())
        rss.append(rss_bytes())
    assert bn.num_batches_tracked.item() == 300
    if rss[0] is not None:  # Linux: resident memory flat (one activation is 110 kB)
        assert rss[-1] - rss[100] < 4e6


# ---------------------------------------------------------------------------------------------
# torch.compile: one graph, same numbers
# ---------------------------------------------------------------------------------------------


def test_compiles_without_graph_breaks() -> None:
    ours, ref = _pair("BatchNorm2d", torch.float32)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 3, 5, 5)
    buffer_sums = torch.zeros(2, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for train in (True, True, False):
            ours.train(train)
            ref.train(train)
            a, b = _step(compiled, x), _step(ref, x)
            terms, sums, buffer_sums = _step_sums(ref, x, buffer_sums)
            for u, v, abs_sum in zip(a, b, sums, strict=False):  # num_batches_tracked: last
                assert_close_sum(u, v, terms=terms, abs_sum=abs_sum)
            assert torch.equal(a[-1], b[-1])
