"""Mini-batches from in-memory tensors: deterministic order, exact resume, rank shards.

The images stay uint8 in memory, once; each batch is gathered with one index operation,
moved to the device, and normalised there exactly as the tutorial's torchvision
transforms do (``ToTensor`` then ``Normalize((0.5,), (0.5,))``)::

    x = (u / 255 - 0.5) / 0.5        u in {0, ..., 255}  ->  x in [-1, 1], float32

The order of epoch ``e`` is a permutation drawn from a ``torch.Generator`` seeded from
``(seed, e)`` only, so it never depends on what ran before; ``start=k`` skips the first
``k`` batches of that epoch. Together they make a resumed run see exactly the batches an
uninterrupted one would. ``rank``/``world_size`` follow ``DistributedSampler`` with
``drop_last=False``: the order is padded by wrapping around to a multiple of
``world_size`` and rank ``r`` takes ``order[r::world_size]``. ``drop_last`` here is the
``DataLoader`` one: drop a last batch smaller than ``batch_size``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch

from normlab.errors import UsageError


def normalize_images(images_uint8: torch.Tensor) -> torch.Tensor:
    """Scale uint8 images to [-1, 1] as float32 and add the channel dimension.

    Formula: ``x = (u / 255 - 0.5) / 0.5``, computed in float32 in that order (as
    torchvision's ``ToTensor`` + ``Normalize((0.5,), (0.5,))``).

    Shape:
        ``(B, H, W)`` -> ``(B, 1, H, W)``; ``(B, C, H, W)`` stays as it is.

    Example:
        >>> normalize_images(torch.tensor([[[0, 255]]], dtype=torch.uint8))
        tensor([[[[-1.,  1.]]]])
    """
    if not isinstance(images_uint8, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images_uint8).__name__}")
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (0..255), got {images_uint8.dtype}")
    if images_uint8.dim() == 3:
        images_uint8 = images_uint8.unsqueeze(1)
    elif images_uint8.dim() != 4:
        raise ValueError(f"expected 3D or 4D images (got {images_uint8.dim()}D input)")
    return images_uint8.to(torch.float32).div_(255).sub_(0.5).div_(0.5)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that depends on ``(seed, epoch)`` only (and distinct pairs
    give unrelated seeds, unlike ``seed + epoch``)."""
    digest = hashlib.sha256(f"normlab:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def epoch_order(num_examples: int, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> torch.Tensor:
    """The example order of one epoch: ``randperm`` from the ``(seed, epoch)`` generator,
    or ``arange`` without shuffling. Shape: ``(num_examples,)`` int64 on the CPU."""
    if not shuffle:
        return torch.arange(num_examples)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(num_examples, generator=generator)


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """``DistributedSampler`` (drop_last=False): pad ``order`` by wrapping to a multiple
    of ``world_size``, then take every ``world_size``-th index starting at ``rank``."""
    if world_size == 1 or order.numel() == 0:
        return order
    total = math.ceil(order.numel() / world_size) * world_size
    padding = total - order.numel()
    if padding:
        repeats = math.ceil(padding / order.numel())
        order = torch.cat([order, order.repeat(repeats)[:padding]])
    return order[rank::world_size]


def _check(batch_size: int, rank: int, world_size: int, start: int = 0) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise UsageError(f"world_size must be a positive integer, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise UsageError(f"rank must be in 0..{world_size - 1}, got {rank!r}")
    if not isinstance(start, int) or start < 0:
        raise UsageError(f"start must be a non-negative batch index, got {start!r}")


def num_batches(
    num_examples: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> int:
    """How many batches :func:`batches` yields per epoch (with ``start=0``) on ``rank``.

    Formula: ``n = ceil(num_examples / world_size)`` examples per rank, then
    ``floor(n / batch_size)`` with ``drop_last`` else ``ceil(n / batch_size)``.
    """
    _check(batch_size, rank, world_size)
    if num_examples < 0:
        raise UsageError(f"num_examples must be >= 0, got {num_examples}")
    per_rank = math.ceil(num_examples / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def final_batch_size(num_examples: int, batch_size: int, *, world_size: int = 1) -> int:
    """Size of the last batch :func:`batches` yields per epoch on each rank (``drop_last``
    off): ``n - (ceil(n / batch_size) - 1) * batch_size`` with ``n = ceil(num_examples /
    world_size)``; 0 for no examples."""
    per_rank = math.ceil(num_examples / world_size)
    count = num_batches(num_examples, batch_size, world_size=world_size)
    return per_rank - (count - 1) * batch_size if count else 0


def batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` mini-batches of one epoch: ``x`` normalised float32, ``y`` int64.

    Args:
        images: uint8 ``(N, H, W)`` (or ``(N, C, H, W)``), on any device.
        labels: integer ``(N,)``, same device as ``images``.
        batch_size: examples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: draw the order from ``(seed, epoch)``; else the stored order.
        seed, epoch: pick the permutation; the same pair always gives the same order.
        start: skip the first ``start`` batches of the epoch (resume mid-epoch).
        rank, world_size: this process's shard, as ``DistributedSampler``.
        drop_last: drop a final batch smaller than ``batch_size``.
        device: where the batches go; when ``images`` is already there nothing is copied
            but the batch itself.

    Shape:
        ``x``: ``(B, 1, H, W)`` (``(B, C, H, W)`` for 4D input), ``y``: ``(B,)``.

    Example:
        >>> for x, y in batches(data.train_images, data.train_labels, 64, shuffle=True,
        ...                     seed=0, epoch=epoch):
        ...     loss = F.cross_entropy(model(x), y)
    """
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("images and labels must be torch.Tensor")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (normalised per batch), got {images.dtype}")
    if labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(
            f"labels must be 1D with one label per image: {tuple(labels.shape)} labels "
            f"for {len(images)} images"
        )
    _check(batch_size, rank, world_size, start)
    device = torch.device(device)
    order = shard(epoch_order(len(images), shuffle=shuffle, seed=seed, epoch=epoch), rank,
                  world_size)  # fmt: skip
    total = num_batches(len(images), batch_size, world_size=world_size, drop_last=drop_last)
    if start > total:
        raise UsageError(f"start={start} is past the end of the epoch ({total} batches)")
    return _generate(images, labels, order.to(images.device), batch_size, start, total, device)


def _generate(
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    start: int,
    stop: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    # A separate generator so that batches() checks its arguments when called, not later.
    for index in range(start, stop):
        chosen = order[index * batch_size : (index + 1) * batch_size]
        x = images.index_select(0, chosen).to(device, non_blocking=True)
        y = labels.index_select(0, chosen).to(device, dtype=torch.int64, non_blocking=True)
        yield normalize_images(x), y
