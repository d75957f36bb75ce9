"""Non-i.i.d. mini-batches: every batch holds images of exactly two classes, half each.

Batch norm assumes the examples of a batch are drawn independently from the data; a batch
of two classes breaks that assumption the way metric learning does (Ioffe 2017 samples 16
labels and 2 images of each for a batch of 32). This module builds such batches as index
tensors into a dataset's training split.

The rule, for a batch of ``B`` images (``B`` even, ``B >= 2``) and ``H = B / 2``:

1. each class's images are shuffled and cut into *halves* of ``H`` images; a class's last
   ``count mod H`` images are left out this epoch (fewer than ``H`` per class);
2. halves are paired so that the two halves of a pair come from different classes: each
   pairing step takes one half from each of the two classes with the most halves left (ties
   broken by the shuffled class order), which pairs every half whenever no class holds
   more than half of them; any halves left unpaired (one class holds more than half, or
   the number of halves is odd) are left out too;
3. each pair is one batch, its ``B`` images shuffled (so that any consecutive chunk of a
   batch, as ghost batch norm takes, mixes the two classes), and the batches are shuffled.

So every image is used at most once per epoch, the images left out are at most ``H - 1``
per class plus the unpaired halves, and the order depends only on ``(seed, epoch)``
(:func:`normlab.data.batches.epoch_seed`), as the i.i.d. batches'.

Example:
    >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    >>> order = two_class_batches(labels, 2, seed=0, epoch=0)
    >>> [sorted(set(labels[b].tolist())).__len__() for b in order]
    [2, 2, 2, 2]
"""

from __future__ import annotations

import torch

from normlab.data.batches import epoch_seed

__all__ = ["check_two_class_batch_size", "two_class_batches"]


def check_two_class_batch_size(batch_size: object) -> None:
    """Raise ``ValueError`` unless ``batch_size`` is an even integer >= 2 (two equal halves)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"two-class batches need a batch_size >= 2, got {batch_size!r}")
    if batch_size % 2:
        raise ValueError(
            f"two-class batches hold two equal halves: batch_size must be even, got {batch_size}"
        )


def _halves(
    labels: torch.Tensor, half: int, generator: torch.Generator
) -> dict[int, list[torch.Tensor]]:
    """Per class (in a shuffled order), its shuffled images cut into halves of ``half``."""
    classes = torch.unique(labels)
    classes = classes[torch.randperm(classes.numel(), generator=generator)]
    out: dict[int, list[torch.Tensor]] = {}
    for label in classes.tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        usable = members.numel() - members.numel() % half
        out[label] = list(members[:usable].split(half)) if usable else []
    return out


def _pairs(halves: dict[int, list[torch.Tensor]]) -> list[torch.Tensor]:
    """Pair halves of different classes, always from the two classes with most left; each
    pair concatenated (one class, then the other)."""
    batches = []
    while True:
        ranked = sorted(halves, key=lambda c: -len(halves[c]))  # stable: shuffled order
        if len(ranked) < 2 or not halves[ranked[1]]:
            return batches
        batches.append(torch.cat([halves[ranked[0]].pop(), halves[ranked[1]].pop()]))


def two_class_batches(
    labels: torch.Tensor, batch_size: int, *, seed: int = 0, epoch: int = 0
) -> list[torch.Tensor]:
    """One epoch of batches, each holding ``batch_size / 2`` images of each of two classes.

    Args:
        labels: the training labels, integer ``(N,)``.
        batch_size: images per batch, even and >= 2.
        seed, epoch: the order depends on these only.

    Returns:
        Index tensors into ``labels``, each int64 of shape ``(batch_size,)``, in training
        order (see the module docstring for the images left out).

    Raises:
        ValueError: an odd or too small ``batch_size``, or ``labels`` not 1-D integers.
    """
    check_two_class_batch_size(batch_size)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError("labels must be a 1-D integer tensor")
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    pairs = _pairs(_halves(labels.cpu(), batch_size // 2, generator))
    mixed = [pair[torch.randperm(batch_size, generator=generator)] for pair in pairs]
    order = torch.randperm(len(mixed), generator=generator).tolist()
    return [mixed[i] for i in order]
