"""Peak resident memory: it sees an allocation, and a reset starts a new peak."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from normlab.train.resources import peak_rss_bytes, reset_peak_rss

SIZE = 200 * 2**20


def test_peak_sees_a_touched_allocation() -> None:
    before = peak_rss_bytes()
    block = np.ones(SIZE, dtype=np.uint8)  # np.ones touches every page
    assert peak_rss_bytes() >= before + SIZE // 2 or peak_rss_bytes() >= SIZE
    del block


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self/clear_refs")
def test_reset_starts_a_new_peak() -> None:
    block = np.ones(SIZE, dtype=np.uint8)
    high = peak_rss_bytes()
    del block
    assert reset_peak_rss()
    assert peak_rss_bytes() <= high - SIZE // 2
