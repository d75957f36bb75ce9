"""One torch thread for these tests: their tensors are small, and on a busy 2-core machine
two threads wait on each other (tests assert no timings, so the count changes nothing else)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
