"""batches(): order, resume, shards, normalisation, shapes; num_batches()."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.data import DistributedSampler

from normlab.data import batches, final_batch_size, normalize_images, num_batches
from normlab.errors import UsageError


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with i % 256 and labelled i, so a batch reveals its indices."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1).expand(n, 4, 4).contiguous()
    return images, torch.arange(n)


def _order(n: int, batch_size: int = 7, **kwargs) -> list[int]:
    images, labels = _data(n)
    kwargs.setdefault("shuffle", True)
    return [i for _, y in batches(images, labels, batch_size, **kwargs) for i in y.tolist()]


def test_normalize_closed_form() -> None:
    u = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    x = normalize_images(u)
    assert x.shape == (1, 1, 16, 16) and x.dtype == torch.float32
    expected = 2 * torch.arange(256, dtype=torch.float64) / 255 - 1  # (u/255 - 0.5)/0.5
    torch.testing.assert_close(x.double().flatten(), expected, rtol=0, atol=1.2e-7)
    assert x.min() == -1 and x.max() == 1 and x.flatten()[0] == -1 and x.flatten()[-1] == 1
    # 4-D input keeps its channels; the input is not modified
    four = torch.full((2, 3, 2, 2), 51, dtype=torch.uint8)
    assert normalize_images(four).shape == (2, 3, 2, 2)
    assert torch.allclose(normalize_images(four), torch.tensor(2 * 51 / 255 - 1))
    assert int(four[0, 0, 0, 0]) == 51


def test_normalize_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="images must be uint8"):
        normalize_images(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"expected 3D or 4D images \(got 2D input\)"):
        normalize_images(torch.zeros(2, 2, dtype=torch.uint8))


def test_shapes_dtypes_and_values() -> None:
    images, labels = _data(10)
    out = list(batches(images, labels, 4, shuffle=False))
    assert [tuple(x.shape) for x, _ in out] == [(4, 1, 4, 4), (4, 1, 4, 4), (2, 1, 4, 4)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in out)
    x, y = out[1]
    assert y.tolist() == [4, 5, 6, 7]
    torch.testing.assert_close(x[:, 0, 0, 0], 2 * y.float() / 255 - 1)
    dropped = list(batches(images, labels, 4, shuffle=False, drop_last=True))
    assert len(dropped) == 2


def test_shuffle_is_a_permutation_determined_by_seed_and_epoch() -> None:
    first = _order(100, seed=5, epoch=2)
    assert sorted(first) == list(range(100)) and first != list(range(100))
    assert _order(100, seed=5, epoch=2) == first
    assert _order(100, seed=5, epoch=3) != first
    assert _order(100, seed=6, epoch=2) != first
    assert _order(100, seed=4, epoch=3) != _order(100, seed=5, epoch=2)  # not seed + epoch


def test_epoch_order_does_not_depend_on_history() -> None:
    fresh = _order(50, seed=1, epoch=3)
    for epoch in range(3):  # run the earlier epochs first, and disturb the global RNG
        _order(50, seed=1, epoch=epoch)
    torch.manual_seed(1234)
    torch.rand(100)
    assert _order(50, seed=1, epoch=3) == fresh


@pytest.mark.parametrize("start", [0, 1, 5, 14, 15])
def test_start_equals_skipping(start: int) -> None:
    images, labels = _data(100)  # 15 batches of 7
    full = list(batches(images, labels, 7, shuffle=True, seed=2, epoch=1))
    resumed = list(batches(images, labels, 7, shuffle=True, seed=2, epoch=1, start=start))
    assert len(resumed) == len(full) - start
    for (x, y), (x_full, y_full) in zip(resumed, full[start:], strict=True):
        assert torch.equal(x, x_full) and torch.equal(y, y_full)


def test_start_past_the_end() -> None:
    images, labels = _data(10)
    with pytest.raises(UsageError, match=r"start=3 is past the end of the epoch \(2 batches\)"):
        batches(images, labels, 5, shuffle=False, start=3)


@pytest.mark.parametrize(("n", "world_size"), [(12, 3), (10, 3), (10, 4), (2, 5), (17, 2)])
def test_shards_match_distributed_sampler(n: int, world_size: int) -> None:
    # the oracle: torch's DistributedSampler without shuffling (the padding rule)
    for rank in range(world_size):
        expected = list(DistributedSampler(range(n), world_size, rank, shuffle=False))
        assert _order(n, 3, shuffle=False, rank=rank, world_size=world_size) == expected


@pytest.mark.parametrize(("n", "world_size"), [(12, 3), (10, 4)])
def test_shuffled_shards_are_disjoint_and_cover_the_epoch(n: int, world_size: int) -> None:
    shards = [
        _order(n, 2, seed=9, epoch=4, rank=rank, world_size=world_size)
        for rank in range(world_size)
    ]
    assert {len(s) for s in shards} == {math.ceil(n / world_size)}
    everything = sorted(itertools.chain(*shards))
    padding = len(everything) - n
    assert sorted(set(everything)) == list(range(n))  # covered
    if padding == 0:
        assert everything == list(range(n))  # disjoint
    else:  # the padding repeats the first `padding` indices of the epoch's order
        order = _order(n, seed=9, epoch=4)
        assert sorted(everything) == sorted(order + order[:padding])


@pytest.mark.parametrize(
    ("n", "batch_size", "world_size", "drop_last"),
    [(100, 7, 1, False), (100, 7, 1, True), (100, 10, 1, True), (10, 3, 4, False),
     (10, 3, 4, True), (0, 4, 1, False), (1, 64, 1, False), (1, 64, 1, True)],
)  # fmt: skip
def test_num_batches_matches_batches(
    n: int, batch_size: int, world_size: int, drop_last: bool
) -> None:
    images, labels = _data(n)
    for rank in range(world_size):
        got = list(
            batches(images, labels, batch_size, shuffle=True, rank=rank, world_size=world_size,
                    drop_last=drop_last)
        )  # fmt: skip
        count = num_batches(n, batch_size, rank=rank, world_size=world_size, drop_last=drop_last)
        assert len(got) == count
    assert num_batches(60000, 64) == 938 and num_batches(60000, 64, drop_last=True) == 937


def test_images_stay_uint8_in_memory() -> None:
    images, labels = _data(20)
    before = images.clone()
    for _ in batches(images, labels, 6, shuffle=True):
        pass
    assert images.dtype == torch.uint8 and torch.equal(images, before)


def test_device_argument() -> None:
    images, labels = _data(8)
    x, y = next(batches(images, labels, 8, shuffle=False, device=torch.device("cpu")))
    assert x.device.type == "cpu" and y.device.type == "cpu"
    if torch.cuda.is_available():  # pragma: no cover - exercised on GPU machines
        x, y = next(batches(images.cuda(), labels.cuda(), 8, shuffle=True, device="cuda"))
        assert x.is_cuda and y.is_cuda


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, UsageError, "batch_size must be a positive integer"),
        ({"batch_size": 2.5}, UsageError, "batch_size must be a positive integer"),
        ({"rank": 2, "world_size": 2}, UsageError, r"rank must be in 0..1, got 2"),
        ({"world_size": 0}, UsageError, "world_size must be a positive integer"),
        ({"start": -1}, UsageError, "start must be a non-negative batch index"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    images, labels = _data(10)
    kwargs = {"batch_size": 4, **kwargs}
    with pytest.raises(error, match=match):
        batches(images, labels, kwargs.pop("batch_size"), shuffle=True, **kwargs)


def test_bad_tensors() -> None:
    images, labels = _data(10)
    with pytest.raises(TypeError, match="images must be uint8"):
        batches(images.float(), labels, 4, shuffle=True)
    with pytest.raises(ValueError, match=r"one label per image: \(9,\) labels for 10 images"):
        batches(images, labels[:9], 4, shuffle=True)


@pytest.mark.parametrize(
    "n,size,world", [(65, 32, 1), (64, 32, 1), (66, 32, 1), (7, 3, 2), (1, 4, 1)]
)
def test_final_batch_size_is_the_last_batch_yielded(n: int, size: int, world: int) -> None:
    images = torch.zeros(n, 2, 2, dtype=torch.uint8)
    labels = torch.zeros(n, dtype=torch.int64)
    for rank in range(world):
        stream = batches(images, labels, size, shuffle=False, rank=rank, world_size=world)
        *_, (x, _) = stream
        assert final_batch_size(n, size, world_size=world) == len(x)
