"""normlab.kernels.cache_cpu_memory: freed blocks come back without page faults, the
numbers of a training run do not change, the cache respects its limit.

Each case runs in a fresh process: the allocator is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from normlab import kernels

PROGRAM = """
import json, resource, sys, torch
from normlab import kernels
from normlab.models.lenet import LeNet
mode, limit = sys.argv[1], int(sys.argv[2])
applied = kernels.cache_cpu_memory(limit) if mode == "cache" else False

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

counts = []
for _ in range(6):  # a 64x6x24x24 float tensor (885 KB), written then freed
    before = faults()
    torch.empty(64, 6, 24, 24).fill_(1.0)
    counts.append(faults() - before)
cached = kernels.cached_cpu_bytes()

torch.manual_seed(0)
model = LeNet(norm="batch")
optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
losses = []
for _ in range(5):
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(json.dumps({"applied": applied, "faults": counts, "cached": cached, "losses": losses}))
"""

pytestmark = pytest.mark.skipif(kernels.ops() is None, reason="kernels not built")


def _run(mode: str, limit: int = kernels.DEFAULT_MAX_CACHED_BYTES) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode, str(limit)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_freed_blocks_come_back_without_page_faults_and_same_numbers() -> None:
    default, cached = _run("default"), _run("cache")
    assert cached["applied"] is True
    pages = 64 * 6 * 24 * 24 * 4 // 4096  # 216: what a fresh block costs
    assert cached["faults"][0] > pages // 2  # the first allocation maps its pages
    assert max(cached["faults"][1:]) < pages // 20, cached  # then the block is reused
    assert cached["cached"] == pages * 4096  # the freed block waits in the cache
    assert default["cached"] == 0
    assert cached["losses"] == default["losses"]  # bit for bit: memory, not arithmetic


def test_a_zero_limit_caches_nothing() -> None:
    result = _run("cache", limit=0)
    assert result["applied"] is True
    assert result["cached"] == 0


def test_bad_limit_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_cached_bytes must be a non-negative integer"):
        kernels.cache_cpu_memory(-1)
