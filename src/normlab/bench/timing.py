"""Interleaved timing of several candidates in one process, reported as ratios.

A benchmark that times candidate A for a while and then candidate B lets machine noise
(another job, a frequency change, a warm cache) land on one of them only. Here every
repeat runs *each* candidate once, so noise hits all of them alike, and the ratio of two
candidates is also taken *per repeat* (their two timings were measured seconds apart).

The order changes from one repeat to the next in a balanced way (a Williams design,
:func:`balanced_orders`): over one cycle of orders every candidate runs in every
position equally often and follows every other candidate equally often. A plain
rotation (``A B C``, ``B C A``, ``C A B``) would always put B right after A: whatever A
leaves behind (a cold or warm cache, the allocator's free blocks) would land on B alone,
never on C. Three candidates::

    repeat 0:  A B C        repeat 3:  C B A
    repeat 1:  B C A        repeat 4:  A C B
    repeat 2:  C A B        repeat 5:  B A C

One *repeat* of a candidate calls it ``number`` times and records the mean seconds per
call (``time.perf_counter``, or the process's CPU time with ``clock="cpu"``); ``number``
is calibrated per candidate after the warm-up so that one repeat lasts about
``target_seconds``. ``torch.set_num_threads`` is left as is.

Example::

    >>> result = measure({"a": lambda: sum(range(10_000)), "b": lambda: sum(range(1000))},
    ...                  repeats=5)
    >>> compare(result, "a", "b").median > 1
    True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from normlab.errors import UsageError

Fn = Callable[[], object]


@dataclass(frozen=True)
class Summary:
    """min / median / max of a sample of numbers."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: tuple[float, ...] | list[float]) -> Summary:
        if not values:
            raise ValueError("cannot summarise an empty sample")
        return cls(min(values), statistics.median(values), max(values))


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one candidate, one value per repeat, and how it was measured."""

    name: str
    seconds: tuple[float, ...]  # mean seconds per call, one per repeat
    number: int  # calls per repeat

    @property
    def summary(self) -> Summary:
        return Summary.of(self.seconds)


@dataclass(frozen=True)
class Measurement:
    """The timings of every candidate, and the order in which the repeats ran."""

    timings: dict[str, Timing]
    order: tuple[tuple[int, str], ...]  # (repeat, candidate) in the order they ran

    def __getitem__(self, name: str) -> Timing:
        return self.timings[name]


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator`` in time: above 1 means the numerator is slower.

    ``of_medians`` is median(numerator) / median(denominator); ``per_repeat`` summarises
    the ratios of the two timings taken in the same repeat; ``of_minimums`` is
    min(numerator) / min(denominator), the best runs of each (``timeit``'s advice on a
    busy machine: noise only ever adds time).
    """

    numerator: str
    denominator: str
    of_medians: float
    per_repeat: Summary
    of_minimums: float

    @property
    def median(self) -> float:
        return self.of_medians


def balanced_orders(count: int) -> list[tuple[int, ...]]:
    """A cycle of orders of ``count`` candidates (indices) that is balanced for carry-over.

    Williams' design: the first order is ``0, 1, n-1, 2, n-2, 3, ...``, and order ``i``
    adds ``i`` to each index (mod ``n``); for odd ``n`` the ``n`` orders are followed by
    their reverses. Over the cycle every candidate takes every position equally often
    and every ordered pair ``(a, b)``, ``a != b``, stands next to each other (``b`` right
    after ``a``) equally often: once for even ``n`` (``n`` orders), twice for odd ``n``
    (``2n`` orders; ``count <= 2`` gives the plain alternation).
    """
    if count < 1:
        raise UsageError(f"need at least one candidate to order, got {count}")
    first, low, high = [0], 1, count - 1
    while len(first) < count:
        first.append(low)
        low += 1
        if len(first) < count:
            first.append(high)
            high -= 1
    orders = [tuple((index + shift) % count for index in first) for shift in range(count)]
    if count % 2 == 1 and count > 1:
        orders += [order[::-1] for order in orders]
    return orders


CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,  # elapsed time: what a user waits
    "cpu": time.process_time,  # CPU time of this process: blind to other processes' load
}


def _calibrate(
    fn: Fn, target_seconds: float, sync: Callable[[], None], clock: Callable[[], float]
) -> int:
    """Calls per repeat so that one repeat lasts about ``target_seconds`` (at least 1)."""
    number = 1
    while True:
        start = clock()
        for _ in range(number):
            fn()
        sync()
        elapsed = clock() - start
        if elapsed >= target_seconds / 4 or number >= 1 << 20:
            per_call = elapsed / number
            return max(1, round(target_seconds / per_call)) if per_call > 0 else number
        number *= 4


def measure(
    candidates: Mapping[str, Fn],
    repeats: int = 11,
    warmup: int = 2,
    target_seconds: float = 0.05,
    number: int | None = None,
    sync: Callable[[], None] | None = None,
    before: Mapping[str, Callable[[], None]] | None = None,
    clock: str = "wall",
) -> Measurement:
    """Time every candidate, interleaved, and return seconds per call for each repeat.

    Args:
        candidates: name -> a function of no arguments; one call is the unit measured.
        repeats: how many timings to take of each candidate (rounds, in the orders of
            :func:`balanced_orders`: a multiple of its cycle balances them exactly).
        warmup: calls of each candidate before anything is timed (lazy init, compile,
            allocator caches).
        target_seconds: about how long one repeat of one candidate should last; sets
            the calls per repeat of each candidate. Ignored when ``number`` is given.
        number: calls per repeat for every candidate, instead of calibrating.
        sync: called after each repeat's calls and before the clock stops (e.g.
            ``torch.cuda.synchronize`` for asynchronous devices).
        before: name -> a function called before each timed repeat of that candidate,
            outside the clock (housekeeping that is no part of what is measured).
        clock: ``"wall"`` (elapsed time, ``time.perf_counter``) or ``"cpu"`` (CPU time of
            this process, ``time.process_time``: on a machine shared with other jobs it
            does not count the time this process waits for a core; with several threads
            it adds up their CPU times).

    Raises:
        UsageError: no candidates, or ``repeats``/``number`` below 1, or ``warmup`` below 0,
            or an unknown ``clock``.
    """
    if not candidates:
        raise UsageError("measure needs at least one candidate")
    if repeats < 1:
        raise UsageError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise UsageError(f"warmup must be at least 0, got {warmup}")
    if number is not None and number < 1:
        raise UsageError(f"number must be at least 1, got {number}")
    if clock not in CLOCKS:
        raise UsageError(f"unknown clock {clock!r}; valid: {', '.join(CLOCKS)}")
    now = CLOCKS[clock]
    wait = sync or (lambda: None)
    names = list(candidates)
    unknown = set(before or {}) - set(names)
    if unknown:
        raise UsageError(f"before names no candidate: {', '.join(sorted(unknown))}")
    prepare = {name: (before or {}).get(name, lambda: None) for name in names}
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    if warmup:
        wait()
    calls = {
        name: number or _calibrate(candidates[name], target_seconds, wait, now) for name in names
    }
    seconds: dict[str, list[float]] = {name: [] for name in names}
    order: list[tuple[int, str]] = []
    orders = balanced_orders(len(names))
    for repeat in range(repeats):
        for name in (names[index] for index in orders[repeat % len(orders)]):
            fn, n = candidates[name], calls[name]
            prepare[name]()
            start = now()
            for _ in range(n):
                fn()
            wait()
            seconds[name].append((now() - start) / n)
            order.append((repeat, name))
    timings = {name: Timing(name, tuple(seconds[name]), calls[name]) for name in names}
    return Measurement(timings, tuple(order))


def compare(measurement: Measurement, numerator: str, denominator: str) -> Ratio:
    """The time ratio ``numerator / denominator`` of two measured candidates."""
    for name in (numerator, denominator):
        if name not in measurement.timings:
            raise UsageError(
                f"no candidate {name!r} was measured; measured: {', '.join(measurement.timings)}"
            )
    top, bottom = measurement[numerator].seconds, measurement[denominator].seconds
    per_repeat = [a / b for a, b in zip(top, bottom, strict=True)]
    of_medians = statistics.median(top) / statistics.median(bottom)
    return Ratio(numerator, denominator, of_medians, Summary.of(per_repeat), min(top) / min(bottom))
