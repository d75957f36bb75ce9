"""Bytes a forward pass saves for its backward pass.

Every tensor autograd keeps for the backward (``ctx.save_for_backward`` in a custom
``Function``, or the inputs/outputs a built-in op's backward needs) goes through the
pack hook of :func:`torch.autograd.graph.saved_tensors_hooks`. We add up the sizes of
the distinct *storages* behind those tensors, so a tensor saved twice, or two views of
one tensor, count once::

    saved bytes = sum over unique storages s of nbytes(s)

The layer's input counts too (a batch norm must keep it, or its normalised copy);
parameters saved by the backward count as well. Compare two layers fed the same input.

Example::

    >>> x = torch.randn(64, 16, requires_grad=True)
    >>> saved_bytes(lambda: x.sigmoid())   # sigmoid saves its output: 64*16*4 bytes
    4096
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _storage_key(tensor: torch.Tensor) -> tuple[str, int, int] | None:
    """(device, address, size) of the storage behind ``tensor``; None when it has none."""
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return None
    return (str(tensor.device), storage.data_ptr(), storage.nbytes())


def saved_bytes(forward: Callable[[], object]) -> int:
    """Sum of the unique storages saved for backward while ``forward()`` runs.

    Args:
        forward: runs the forward pass (with grad enabled, inputs requiring grad).

    Returns:
        Bytes; 0 when nothing is saved (e.g. no input requires grad).
    """
    storages: dict[tuple[str, int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key is not None and key[2] > 0:
            storages[key] = key[2]
        return tensor

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        output = forward()
    del output
    return sum(storages.values())
