"""What the lab measures once per seed: one number (:class:`SeedStats`) or one curve
(:class:`Curve`), with its mean and spread across seeds.

The experiments' summaries are made of these; the verdicts (:mod:`normlab.lab.verdicts`)
and the guide (:mod:`normlab.lab.guide`) read them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Curve", "SeedStats"]


@dataclass(frozen=True)
class SeedStats:
    """One number measured once per seed: mean and std (ddof=1) over the finite values.

    ``values`` keeps every seed's value in seed order (None where a seed did not finish);
    ``mean`` and ``std`` are None when no value is finite.
    """

    mean: float | None
    std: float | None
    n: int
    values: list[float | None]


@dataclass(frozen=True)
class Curve:
    """A curve measured once per seed, cut to the shortest: pointwise mean and std
    (ddof=1) and the curves themselves.

    Shape:
        ``mean``, ``std``: ``(T,)``; ``values``: ``(seeds, T)``.
    """

    mean: list[float]
    std: list[float]
    values: list[list[float]]
