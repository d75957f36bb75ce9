"""The kinds of layer ``normlab audit`` grades, each with its ``torch.nn`` twin.

A kind fixes what the audited layer is compared with: the twin class, the constructor
arguments both are built with, an input shape, and the dimension that carries the
features (channels for batch, instance and group norm; the last one for layer and RMS
norm). Shapes are small on purpose: the audit runs hundreds of steps and compiles.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from normlab.errors import UsageError

__all__ = ["KINDS", "Kind", "kind_named"]


@dataclass(frozen=True)
class Kind:
    """One kind of normalization layer.

    Args:
        name: the ``--kind`` value, e.g. ``"batch2d"``.
        twin: the ``torch.nn`` class the layer is compared with.
        args: constructor arguments, the same for the layer and its twin.
        shape: the input shape ``(N, ...)`` of most checks.
        feature_dim: the dimension whose size the constructor fixes (``C`` or ``D``).
        reduced_dims: the dimensions one statistic is computed over.
        group: index of one normalised group of values (made constant by one check).
    """

    name: str
    twin: type[nn.Module]
    args: tuple[int, ...]
    shape: tuple[int, ...]
    feature_dim: int
    reduced_dims: tuple[int, ...]
    group: tuple[int | slice, ...]

    @property
    def values_per_statistic(self) -> int:
        """How many input values one mean or variance sums (``m``)."""
        count = 1
        for dim in self.reduced_dims:
            count *= self.shape[dim]
        if self.name == "group":
            count *= self.args[1] // self.args[0]  # a group spans C / G channels
        return count

    @property
    def has_running_stats(self) -> bool:
        """Whether the twin, built with :attr:`args`, tracks running statistics."""
        return self.name.startswith("batch")

    @property
    def signature(self) -> str:
        """``BatchNorm2d(4)``: how the layer and its twin are built."""
        return f"{self.twin.__name__}({', '.join(str(a) for a in self.args)})"


_ALL = slice(None)

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("batch1d", nn.BatchNorm1d, (4,), (16, 4), 1, (0,), (_ALL, 0)),
        Kind("batch2d", nn.BatchNorm2d, (4,), (8, 4, 5, 5), 1, (0, 2, 3), (_ALL, 0)),
        Kind("batch3d", nn.BatchNorm3d, (3,), (4, 3, 3, 3, 3), 1, (0, 2, 3, 4), (_ALL, 0)),
        Kind("instance2d", nn.InstanceNorm2d, (4,), (4, 4, 5, 5), 1, (2, 3), (_ALL, 0)),
        Kind("layer", nn.LayerNorm, (8,), (4, 5, 8), 2, (2,), (0, 0)),
        Kind("group", nn.GroupNorm, (3, 6), (4, 6, 5, 5), 1, (2, 3), (_ALL, slice(0, 2))),
        Kind("rms", nn.RMSNorm, (8,), (4, 5, 8), 2, (2,), (0, 0)),
    )
}


def kind_named(name: str) -> Kind:
    """The kind called ``name``.

    Raises:
        UsageError: an unknown name (the message lists the known ones).
    """
    if name not in KINDS:
        raise UsageError(f"unknown kind {name!r}; use one of {', '.join(KINDS)}")
    return KINDS[name]
