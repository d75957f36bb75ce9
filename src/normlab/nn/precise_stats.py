"""Precise batch-norm statistics: the running statistics recomputed after training.

During training a batch norm's running statistics are an exponential moving average of
the batch statistics of *past* weights: with the default momentum 0.1 the last ~10
batches dominate, each computed under weights that have since moved. Wu & Johnson (2021,
"Rethinking 'Batch' in BatchNorm", section 3) call the estimate obtained instead by
running the *final* model over many batches and averaging the per-batch statistics with
equal weights "precise BN". For batches ``b = 1..B`` of one layer's input, per channel::

    running_mean = (1 / B) * sum_b mean_b
    running_var  = (1 / B) * sum_b var_b * n_b / (n_b - 1)      (unbiased, as torch stores)

where ``mean_b``/``var_b`` are batch ``b``'s mean and biased variance over its ``n_b``
values per channel. This is the cumulative average every batch norm computes with
``momentum=None`` (the step ``k`` factor ``1 / k``), which is also how
``torch.optim.swa_utils.update_bn`` computes it: the numbers are the same as its on the
same batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import batchnorm as torch_batchnorm
from tqdm.auto import tqdm


@dataclass(frozen=True)
class RecomputedStats:
    """What :func:`recompute_batch_norm_stats` did.

    Attributes:
        layers: the batch norm layers whose statistics were recomputed.
        batches: how many batches the model ran on.
    """

    layers: int
    batches: int


def batch_norm_layers(model: nn.Module) -> list[torch_batchnorm._BatchNorm]:
    """Every batch norm of ``model`` (torch.nn's or normlab's) that keeps running statistics."""
    return [
        module
        for module in model.modules()
        if isinstance(module, torch_batchnorm._BatchNorm) and module.running_mean is not None
    ]


def _input_of(batch: Any, device: torch.device | str | None) -> Tensor:
    """The model's input in ``batch``: the batch itself, or the first item of a tuple or list
    (``(images, labels)`` from a ``DataLoader``), moved to ``device`` if given."""
    input = batch[0] if isinstance(batch, list | tuple) else batch
    if not isinstance(input, Tensor):
        raise TypeError(
            f"each batch must be a tensor or a (tensor, ...) tuple, got {type(input).__name__}"
        )
    return input if device is None else input.to(device)


def _first_batches(batches: Iterable[Any], num_batches: int | None) -> Iterator[Any]:
    if num_batches is None:
        return iter(batches)
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive integer or None, got {num_batches!r}")
    return islice(batches, num_batches)


def recompute_batch_norm_stats(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: int | None = None,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> RecomputedStats:
    """Replace the running statistics of every batch norm in ``model`` by precise ones.

    Each batch norm's running mean and (unbiased) variance become the equal-weight average of
    its per-batch statistics over the batches (module docstring), ``num_batches_tracked``
    the number of batches. As in ``torch.optim.swa_utils.update_bn`` the whole model runs in
    training mode (dropout included) without gradients; afterwards every module's
    ``training`` flag and every batch norm's ``momentum`` are what they were. Layers without
    running statistics, and other norms, are left alone. Call it after training, before
    evaluation, with training batches (the population the statistics describe).

    Args:
        model: any model; its batch norms are found by type (``torch.nn``'s and normlab's).
        batches: an iterable of input tensors or of ``(input, ...)`` tuples (a
            ``DataLoader`` of ``(images, labels)``); only the first item is fed to the model.
        num_batches: use the first ``num_batches`` batches only; ``None`` for all.
        device: move each input there first; ``None`` leaves it where it is.
        progress: show a progress bar (tqdm).

    Returns:
        :class:`RecomputedStats`: how many layers and batches.

    Raises:
        ValueError: ``num_batches`` not a positive integer, or ``batches`` yields nothing
            (the statistics are then left untouched).

    Example:
        >>> model = torch.nn.Sequential(normlab.nn.BatchNorm1d(4))
        >>> batches = [torch.randn(16, 4) for _ in range(10)]
        >>> recompute_batch_norm_stats(model, batches)
        RecomputedStats(layers=1, batches=10)
    """
    layers = batch_norm_layers(model)
    if not layers:
        return RecomputedStats(layers=0, batches=0)
    inputs = _first_batches(batches, num_batches)
    first = next(inputs, None)
    if first is None:
        raise ValueError("batches yielded no batch: there is nothing to compute statistics from")
    first_input = _input_of(first, device)  # a bad batch is refused before anything changes
    momenta = [layer.momentum for layer in layers]
    modes = [(module, module.training) for module in model.modules()]
    count = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: step k weighs 1 / k
        model.train()
        with torch.no_grad():
            model(first_input)
            count = 1
            for batch in _progress(inputs, _count(batches, num_batches), enabled=progress):
                model(_input_of(batch, device))
                count += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for module, training in modes:
            module.training = training
    return RecomputedStats(layers=len(layers), batches=count)


def _count(batches: Iterable[Any], num_batches: int | None) -> int | None:
    """How many batches will run, if known (for the progress bar)."""
    available = len(batches) if isinstance(batches, Sized) else None
    if num_batches is None or available is None:
        return available if num_batches is None else num_batches
    return min(num_batches, available)


def _progress(batches: Iterator[Any], total: int | None, enabled: bool) -> Iterator[Any]:
    """``batches`` behind a tqdm bar when ``enabled`` (the first batch already counted)."""
    if not enabled:
        return batches
    bar = tqdm(batches, total=total, initial=1, unit="batch", desc="batch norm statistics")
    return iter(bar)
