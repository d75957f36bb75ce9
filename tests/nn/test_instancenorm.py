"""normlab.nn.InstanceNorm1d/2d/3d against torch.nn (the oracle)."""

from __future__ import annotations

import inspect
import itertools
import warnings

import pytest
import torch
from torch import nn

import normlab.nn as ours_nn
from normlab.testing.tolerance import assert_close_sum, normalization_sums

CASES = [  # (class name, input shape); the unbatched shapes have no N
    ("InstanceNorm1d", (4, 3, 5)),
    ("InstanceNorm1d", (3, 5)),
    ("InstanceNorm2d", (4, 3, 5, 2)),
    ("InstanceNorm2d", (3, 5, 2)),
    ("InstanceNorm3d", (2, 3, 2, 3, 2)),
    ("InstanceNorm3d", (3, 2, 3, 2)),
]
CONFIGS = [  # (affine, track_running_stats, momentum); momentum=None means 0 here
    *itertools.product([True, False], [True, False], [0.1]),
    (True, True, None),
]


def _pair(name: str, dtype: torch.dtype, **kwargs: object) -> tuple[nn.Module, nn.Module]:
    ours = getattr(ours_nn, name)(3, dtype=dtype, **kwargs)
    ref = getattr(nn, name)(3, dtype=dtype, **kwargs)
    with torch.no_grad():
        for m in (ours, ref):
            if m.weight is not None:
                m.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
                m.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    return ours, ref


def _step_sums(
    ref: nn.Module, x: torch.Tensor, buffer_sums: torch.Tensor
) -> tuple[int, list[torch.Tensor], torch.Tensor]:
    """(values per instance, ``sum |terms|`` of each value ``_step`` returns, the running
    statistics' sums so far) for ``x`` of shape ``(N, C, *)``: training (or no running
    statistics) normalizes each sample's channel (``normalization_sums``), evaluation
    divides by the running statistics (one term per value); each update adds the mean over
    the batch of the instances' ``|x|`` and ``(x - mean)^2`` (with its first-order move)."""
    samples, c = x.shape[0], x.shape[1]
    rows = x.double().reshape(samples * c, -1)
    grads = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).double().reshape(rows.shape)
    w = torch.ones(c, dtype=torch.float64) if ref.weight is None else ref.weight.double()
    w = w.detach().abs().repeat(samples)[:, None]
    if ref.training or not ref.track_running_stats:
        sums = normalization_sums(rows, grads, ref.eps, weight=w)
        output, grad_input, weight_terms = sums.output, sums.grad_input, sums.weight_terms
    else:
        sigma = (ref.running_var.double().repeat(samples)[:, None] + ref.eps).sqrt()
        centre = ref.running_mean.double().abs().repeat(samples)[:, None]
        condition = (rows.abs() + centre) / sigma
        output, grad_input, weight_terms = (
            w * condition,
            w * grads.abs() / sigma,
            grads.abs() * condition,
        )
    if ref.bias is not None:
        output = output + ref.bias.detach().double().abs().repeat(samples)[:, None]
    result = [output, grad_input]
    if ref.weight is not None:
        per_channel = lambda t: t.sum(1).reshape(samples, c).sum(0)  # noqa: E731
        result += [per_channel(weight_terms), per_channel(grads.abs())]
    if ref.track_running_stats:
        if ref.training:
            centred = (rows - rows.mean(1, keepdim=True)).abs()
            mean_terms = rows.abs().mean(1, keepdim=True)
            variance = (centred * (centred + 2 * mean_terms)).mean(1) * 2  # n / (n - 1) <= 2
            update = torch.stack([mean_terms[:, 0], variance]).reshape(2, samples, c).mean(1)
            buffer_sums = buffer_sums + update
        initial = torch.tensor([[0.0], [1.0]], dtype=torch.float64)  # torch's initial buffers
        result += list(buffer_sums + initial)
    return rows.shape[1], result, buffer_sums


def _step(m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    y = m(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
    result = [y.detach(), x.grad, *(p.grad.clone() for p in m.parameters())]
    result += [b.clone() for b in m.buffers()]
    m.zero_grad()
    return result


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
    ours, ref = _pair(name, dtype, affine=affine, track_running_stats=track, momentum=momentum)
    g = torch.Generator().manual_seed(0)
    batched = len(shape) == int(name[-2]) + 2
    buffer_sums = torch.zeros(2, 3, dtype=torch.float64)
    for step in range(4):  # three training steps, then evaluation
        ours.train(step < 3)
        ref.train(step < 3)
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(dtype)
        a, b = _step(ours, x), _step(ref, x)
        assert len(a) == len(b)
        x_rows = x if batched else x.unsqueeze(0)
        terms, sums, buffer_sums = _step_sums(ref, x_rows, buffer_sums)
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            if not u.is_floating_point():  # num_batches_tracked
                assert torch.equal(u, v), f"step {step} item {i}"
                continue
            abs_sum = sums[i].reshape(u.shape) if i < 2 else sums[i]
            assert_close_sum(u, v, terms=terms, abs_sum=abs_sum)


def test_unbatched_equals_batch_of_one() -> None:
    m = ours_nn.InstanceNorm2d(3, affine=True)
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(m(x), m(x.unsqueeze(0)).squeeze(0))


@pytest.mark.parametrize("name", ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"])
def test_signature_repr_and_state_dict_match_torch(name: str) -> None:
    ours_cls, ref_cls = getattr(ours_nn, name), getattr(nn, name)
    ours_sig, ref_sig = inspect.signature(ours_cls), inspect.signature(ref_cls)
    assert list(ours_sig.parameters) == list(ref_sig.parameters)
    for p in ref_sig.parameters:
        assert ours_sig.parameters[p].default == ref_sig.parameters[p].default
    for kwargs in ({}, {"affine": True, "track_running_stats": True}, {"affine": True}):
        ours, ref = ours_cls(3, **kwargs), ref_cls(3, **kwargs)
        assert repr(ours) == repr(ref)
        assert list(ours.state_dict()) == list(ref.state_dict())
        with torch.no_grad():
            for t in ref.state_dict().values():
                t.add_(1)
        ours.load_state_dict(ref.state_dict())
        back = ref_cls(3, **kwargs)
        back.load_state_dict(ours.state_dict())
        for key, value in ref.state_dict().items():
            # not a rounding tolerance: a state_dict round trip copies, bit for bit
            torch.testing.assert_close(back.state_dict()[key], value, rtol=0, atol=0)


def test_old_checkpoint_with_running_stats_is_rejected_like_torch() -> None:
    state = nn.InstanceNorm1d(3, track_running_stats=True).state_dict()
    del state._metadata  # type: ignore[attr-defined]  # a checkpoint from before torch 0.4
    messages = []
    for cls in (ours_nn.InstanceNorm1d, nn.InstanceNorm1d):
        with pytest.raises(RuntimeError) as info:
            cls(3).load_state_dict(state)
        messages.append(str(info.value).replace(cls.__module__, ""))
    assert messages[0] == messages[1]
    assert "Unexpected running stats buffer(s)" in messages[0]


def _message(fn: object) -> str:
    with pytest.raises(ValueError) as info:
        fn()  # type: ignore[operator]
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("InstanceNorm1d", {}, (2, 3, 4, 5)),
        ("InstanceNorm2d", {}, (3, 4)),
        ("InstanceNorm3d", {}, (2, 3, 4, 5, 6, 7)),
        ("InstanceNorm1d", {"affine": True}, (2, 4, 5)),  # num_features mismatch
        ("InstanceNorm2d", {}, (2, 3, 1, 1)),  # one spatial element
    ],
)
def test_errors_equal_torch(name: str, kwargs: dict[str, object], shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    expected = _message(lambda: getattr(nn, name)(3, **kwargs)(x))
    assert _message(lambda: getattr(ours_nn, name)(3, **kwargs)(x)) == expected


def test_num_features_mismatch_without_affine_warns_like_torch() -> None:
    x = torch.randn(2, 4, 5)
    texts = []
    for cls in (ours_nn.InstanceNorm1d, nn.InstanceNorm1d):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = cls(3)(x)
        texts.append([str(w.message) for w in caught])
        assert y.shape == x.shape
    assert texts[0] == texts[1] and len(texts[0]) == 1


def test_eval_with_tracked_stats_uses_them_and_needs_no_batch_stats() -> None:
    ours, ref = _pair("InstanceNorm1d", torch.float64, affine=True, track_running_stats=True)
    train_x = torch.randn(4, 3, 6, dtype=torch.float64) * 3 + 1
    for m in (ours, ref):
        m(train_x)
        m.eval()
    x = torch.randn(2, 3, 1, dtype=torch.float64)  # one position: fine in evaluation
    torch.testing.assert_close(ours(x), ref(x))
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 0
