"""The interleaved timing harness: order, calibration, ratios, errors."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from itertools import pairwise

import pytest

from normlab.bench.timing import (
    Measurement,
    Summary,
    Timing,
    balanced_orders,
    compare,
    measure,
)
from normlab.errors import UsageError


def test_ratio_of_sleeps_lands_in_the_right_order_of_magnitude() -> None:
    # Sleeping is not slowed down by other processes on the CPUs, unlike arithmetic.
    m = measure(
        {"slow": lambda: time.sleep(0.02), "fast": lambda: time.sleep(0.002)},
        repeats=5,
        warmup=0,
        number=1,
    )
    ratio = compare(m, "slow", "fast")
    assert 3 < ratio.of_medians < 30  # 10 in theory; scheduler wake-ups blur the fast one
    assert 3 < ratio.per_repeat.median < 30
    assert compare(m, "fast", "slow").of_medians == pytest.approx(1 / ratio.of_medians)
    assert m["slow"].summary.min >= 0.02  # a sleep never wakes early


def test_the_cpu_clock_does_not_count_sleep_but_counts_work() -> None:
    """A sleep takes wall time and (almost) no CPU time; arithmetic takes both."""

    def work() -> None:
        sum(range(200_000))

    def nap() -> None:
        time.sleep(0.01)

    cpu = measure({"work": work, "nap": nap}, repeats=3, warmup=0, number=2, clock="cpu")
    wall = measure({"nap": nap}, repeats=3, warmup=0, number=2, clock="wall")
    assert cpu["nap"].summary.median < 0.002 < 0.01 <= wall["nap"].summary.min
    assert cpu["work"].summary.min > cpu["nap"].summary.median
    with pytest.raises(UsageError, match="unknown clock 'gpu'; valid: wall, cpu"):
        measure({"nap": nap}, clock="gpu")


def test_repeats_run_every_candidate_once_in_balanced_orders() -> None:
    calls: list[str] = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    m = measure(candidates, repeats=7, warmup=0, number=1)
    expected = [*"abc", *"bca", *"cab", *"cba", *"acb", *"bac", *"abc"]  # 6 orders, again
    assert calls == expected  # what actually ran, in order
    assert [name for _, name in m.order] == expected
    assert [repeat for repeat, _ in m.order] == [r for r in range(7) for _ in range(3)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 6, 7, 8])
def test_balanced_orders_put_each_candidate_everywhere_and_after_each_other_alike(
    count: int,
) -> None:
    orders = balanced_orders(count)
    cycle = count if count % 2 == 0 or count == 1 else 2 * count
    assert len(orders) == cycle
    assert all(sorted(order) == list(range(count)) for order in orders)  # each runs once
    for position in range(count):  # every candidate in every position equally often
        seen = Counter(order[position] for order in orders)
        assert seen == dict.fromkeys(range(count), cycle // count)
    pairs = Counter((a, b) for order in orders for a, b in pairwise(order))
    if count > 1:  # every ordered pair of neighbours equally often: once, or twice if odd
        expected = {
            (a, b): 1 if count % 2 == 0 else 2 for a in range(count) for b in range(count) if a != b
        }
        assert pairs == expected


def test_balanced_orders_need_a_candidate() -> None:
    with pytest.raises(UsageError, match="at least one candidate"):
        balanced_orders(0)


def test_warmup_calls_come_before_any_timing_and_number_sets_calls_per_repeat() -> None:
    counts = {"a": 0, "b": 0}

    def make(name: str):
        def call() -> None:
            counts[name] += 1

        return call

    m = measure({"a": make("a"), "b": make("b")}, repeats=3, warmup=2, number=5)
    assert counts == {"a": 2 + 3 * 5, "b": 2 + 3 * 5}
    assert m["a"].number == 5 and len(m["a"].seconds) == 3


def test_calibration_gives_cheap_candidates_more_calls_per_repeat() -> None:
    m = measure(
        {"slow": lambda: time.sleep(0.004), "fast": lambda: None},
        repeats=2,
        warmup=0,
        target_seconds=0.01,
    )
    assert m["slow"].number <= 3  # 0.01 s / 0.004 s per call
    assert m["fast"].number > 100 * m["slow"].number


def test_sync_runs_after_every_repeat_of_every_candidate() -> None:
    events: list[str] = []
    m = measure(
        {"a": lambda: events.append("a"), "b": lambda: events.append("b")},
        repeats=2,
        warmup=0,
        number=2,
        sync=lambda: events.append("sync"),
    )
    assert events == ["a", "a", "sync", "b", "b", "sync", "b", "b", "sync", "a", "a", "sync"]
    assert len(m.order) == 4


def test_before_runs_outside_the_clock_before_each_repeat_of_its_candidate() -> None:
    events: list[str] = []
    m = measure(
        {"a": lambda: events.append("a"), "b": lambda: events.append("b")},
        repeats=2,
        warmup=1,
        number=1,
        before={"b": lambda: (events.append("prep"), time.sleep(0.05))},
    )
    assert events == ["a", "b", "a", "prep", "b", "prep", "b", "a"]
    assert m["b"].summary.max < 0.05  # the sleep in before() is not timed
    with pytest.raises(UsageError, match="before names no candidate: c"):
        measure({"a": lambda: None}, repeats=1, before={"c": lambda: None})


def test_compare_pairs_the_timings_of_the_same_repeat() -> None:
    m = Measurement(
        {
            "x": Timing("x", (2.0, 6.0, 3.0), 1),
            "y": Timing("y", (1.0, 2.0, 6.0), 1),
        },
        order=(),
    )
    ratio = compare(m, "x", "y")
    assert ratio.of_medians == pytest.approx(3.0 / 2.0)
    per_repeat = [2.0, 3.0, 0.5]
    assert ratio.per_repeat == Summary(0.5, statistics.median(per_repeat), 3.0)
    assert (ratio.numerator, ratio.denominator) == ("x", "y")
    assert ratio.of_minimums == pytest.approx(2.0 / 1.0)


def test_summary_is_min_median_max() -> None:
    assert Summary.of([3.0, 1.0, 2.0, 10.0]) == Summary(1.0, 2.5, 10.0)
    with pytest.raises(ValueError, match="empty"):
        Summary.of([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"candidates": {}}, "at least one candidate"),
        ({"repeats": 0}, "repeats must be at least 1"),
        ({"warmup": -1}, "warmup must be at least 0"),
        ({"number": 0}, "number must be at least 1"),
    ],
)
def test_bad_arguments_are_usage_errors(kwargs: dict, message: str) -> None:
    arguments = {"candidates": {"a": lambda: None}, "repeats": 1, **kwargs}
    with pytest.raises(UsageError, match=message):
        measure(**arguments)


def test_compare_names_the_candidates_it_measured() -> None:
    m = measure({"a": lambda: None}, repeats=1, warmup=0, number=1)
    with pytest.raises(UsageError, match="no candidate 'b' was measured; measured: a"):
        compare(m, "a", "b")
