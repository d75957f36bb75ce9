"""The maths of SyncBatchNorm in one process: Chan's combine against numpy, the Function
against torch.nn.functional.batch_norm in float64, gradcheck. No processes are started."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normlab.functional.sync_batchnorm import (
    SyncBatchNormFunction,
    chan_combine,
    combine_moments,
    local_moments,
    sync_batch_norm,
)
from normlab.testing.tolerance import assert_close_sum, normalization_sums, sum_tolerance


def _np_moments(part: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Count, mean and M2 per column of a (n, C) array, straight from numpy."""
    n = part.shape[0]
    if n == 0:
        return 0.0, np.zeros(part.shape[1]), np.zeros(part.shape[1])
    return float(n), part.mean(0), ((part - part.mean(0)) ** 2).sum(0)


@pytest.mark.parametrize("seed", range(6))
def test_combine_moments_matches_numpy_on_random_splits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    channels = int(rng.integers(1, 6))
    parts_count = int(rng.integers(1, 8))
    sizes = rng.integers(0, 9, size=parts_count)
    sizes[rng.integers(0, parts_count)] += 2  # at least two values overall
    data = rng.normal(
        loc=rng.normal(0, 50, channels),
        scale=rng.uniform(0.1, 5, channels),
        size=(int(sizes.sum()), channels),
    )
    parts = np.split(data, np.cumsum(sizes)[:-1])
    moments = [_np_moments(p) for p in parts]
    n, mean, m2 = combine_moments(
        torch.tensor([m[0] for m in moments], dtype=torch.float64),
        torch.tensor(np.stack([m[1] for m in moments])),
        torch.tensor(np.stack([m[2] for m in moments])),
    )
    assert n.item() == data.shape[0]
    count, values = data.shape[0], torch.from_numpy(data)
    centred = (values - values.mean(0)).abs()
    mean_sum = values.abs().mean(0)  # the mean: count terms |x| / count
    # M2 / count: terms (x - mean)^2 / count, and each moves by 2 |x - mean| with the mean
    var_sum = (centred * (centred + 2 * mean_sum)).mean(0)
    assert_close_sum(mean, values.mean(0), terms=count, abs_sum=mean_sum)
    assert_close_sum(m2 / n, values.var(0, correction=0), terms=count, abs_sum=var_sum)
    unbiased_sum = var_sum * count / (count - 1)
    assert_close_sum(m2 / (n - 1), values.var(0), terms=count, abs_sum=unbiased_sum)


def test_chan_combine_is_stable_far_from_zero() -> None:
    # mean 1e4, std 1e-2 in float32: E[x^2] - E[x]^2 would lose every digit of the variance
    rng = np.random.default_rng(1)
    data = rng.normal(1e4, 1e-2, size=(4000, 1))
    a, b = data[:1500].astype(np.float32), data[1500:].astype(np.float32)
    moments = [local_moments(torch.from_numpy(p)) for p in (a, b)]
    n, _, m2 = chan_combine(moments[0], moments[1])
    exact = np.concatenate([a, b]).astype(np.float64).var(0)
    # not a rounding bound: the claim that the variance keeps three digits in float32,
    # where E[x^2] - E[x]^2 (an error ~ u * 1e8, ~6, on a variance of 1e-4) keeps none
    np.testing.assert_allclose((m2 / n).numpy(), exact, rtol=1e-3)


def test_chan_combine_with_empty_parts() -> None:
    x = torch.tensor([[1.0, 4.0], [3.0, 8.0]], dtype=torch.float64)
    full = local_moments(x)
    empty = local_moments(x[:0])
    assert empty[0].item() == 0 and empty[1].tolist() == [0, 0] and empty[2].tolist() == [0, 0]
    for combined in (chan_combine(empty, full), chan_combine(full, empty)):
        assert combined[0].item() == 2
        assert combined[1].tolist() == [2.0, 6.0]
        assert combined[2].tolist() == [2.0, 8.0]
    n, mean, m2 = chan_combine(empty, empty)
    assert n.item() == 0 and torch.isfinite(mean).all() and torch.isfinite(m2).all()


def test_local_moments_reduce_over_batch_and_space() -> None:
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    n, mean, m2 = local_moments(x)
    assert n.item() == 3 * 5 * 6
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(m2 / n, x.var((0, 2, 3), correction=0))


def test_local_moments_of_half_inputs_are_float32() -> None:
    x = torch.randn(8, 3).half()
    _, mean, m2 = local_moments(x)
    assert mean.dtype == m2.dtype == torch.float32
    torch.testing.assert_close(mean, x.float().mean(0))


def test_combine_moments_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"counts \(P,\), means \(P, C\)"):
        combine_moments(torch.ones(2), torch.ones(3, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match="at least one part"):
        combine_moments(torch.ones(0), torch.ones(0, 4), torch.ones(0, 4))


@pytest.mark.parametrize("shape", [(7, 3), (5, 3, 4), (4, 3, 2, 5), (2, 3, 2, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_sync_batch_norm_alone_equals_torch_batch_norm(
    shape: tuple[int, ...], affine: bool
) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 2
    grad = torch.randn(shape, dtype=torch.float64)
    c = shape[1]
    outs, grads, buffers = [], [], []
    for fn in (sync_batch_norm, F.batch_norm):
        xi = x.clone().requires_grad_()
        w = torch.linspace(0.5, 2.0, c, dtype=torch.float64).requires_grad_() if affine else None
        b = torch.linspace(-1.0, 1.0, c, dtype=torch.float64).requires_grad_() if affine else None
        rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
        if fn is sync_batch_norm:
            y = sync_batch_norm(xi, rm, rv, w, b, momentum=0.3, eps=1e-3)
        else:
            y = F.batch_norm(xi, rm, rv, w, b, training=True, momentum=0.3, eps=1e-3)
        y.backward(grad)
        outs.append(y.detach())
        grads.append([t.grad for t in (xi, w, b) if t is not None])
        buffers.append((rm, rv))
    weight = torch.linspace(0.5, 2.0, c, dtype=torch.float64) if affine else None
    bias = torch.linspace(-1.0, 1.0, c, dtype=torch.float64) if affine else None
    n = x.numel() // c
    sums = normalization_sums(
        _per_channel(x),
        _per_channel(grad),
        1e-3,
        weight=None if weight is None else weight[:, None],
    )
    output_sum = sums.output + (0 if bias is None else bias.abs()[:, None])
    assert_close_sum(outs[0], outs[1], terms=n, abs_sum=_from_channels(output_sum, x))
    grad_sums = [_from_channels(sums.grad_input, x)]
    if affine:
        grad_sums += [sums.weight_terms.sum(1), _per_channel(grad).abs().sum(1)]
    for ours, theirs, abs_sum in zip(grads[0], grads[1], grad_sums, strict=True):
        assert_close_sum(ours, theirs, terms=n, abs_sum=abs_sum)
    rows = _per_channel(x)
    centred = (rows - rows.mean(1, keepdim=True)).abs()
    mean_sum = 0.3 * rows.abs().mean(1)  # momentum * mean: terms |x| / n
    var_sum = 0.7 + 0.3 * n / (n - 1) * (centred * (centred + 2 * rows.abs().mean(1, True))).mean(1)
    for ours, theirs, abs_sum in zip(buffers[0], buffers[1], (mean_sum, var_sum), strict=True):
        assert_close_sum(ours, theirs, terms=n, abs_sum=abs_sum)


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, *)`` to ``(C, N * prod(*))``: one row per channel, as batch norm reduces."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def _from_channels(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of ``_per_channel``, into ``like``'s shape."""
    shape = (like.shape[1], like.shape[0], *like.shape[2:])
    return rows.reshape(shape).transpose(0, 1)


def test_function_gradcheck_without_a_group() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return SyncBatchNormFunction.apply(x, w, b, None, None, 1e-5, 0.1, None)

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_half_input_keeps_its_dtype_and_matches_float32() -> None:
    torch.manual_seed(2)
    x = torch.randn(16, 4, 3, 3) * 2 + 1
    y16 = sync_batch_norm(x.half(), None, None)
    y32 = F.batch_norm(x, None, None, training=True)
    assert y16.dtype == torch.float16
    # half rounds the input (moving y by its condition, normalization_sums' output) and
    # the output (|y|), once each; the statistics are float32 sums of 16 * 9 terms
    sums = normalization_sums(_per_channel(x), _per_channel(y32), 1e-5)
    half_sum = _from_channels(sums.output, x) + y32.abs()
    float32_bound = sum_tolerance(torch.float32, 16 * 9, _from_channels(sums.output, x))
    half_bound = sum_tolerance(torch.float16, 1, half_sum)
    assert bool(((y16.float() - y32).abs() <= half_bound + float32_bound).all())


def test_one_value_per_channel_is_an_error() -> None:
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        sync_batch_norm(torch.randn(1, 3), None, None)


def test_bad_input_rank_and_zero_channels_are_errors() -> None:
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        sync_batch_norm(torch.randn(4), None, None)
    with pytest.raises(ValueError, match="input channels should be non-zero"):
        sync_batch_norm(torch.randn(4, 0), None, None)
