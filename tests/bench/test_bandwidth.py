"""normlab.bench.bandwidth: bytes each pass must move, the copy ceiling, datasheet peaks."""

from __future__ import annotations

import types

import pytest
import torch

import normlab.nn
from normlab.bench import bandwidth
from normlab.bench.bandwidth import bench_bandwidth, check_shape, datasheet_gbps, floor_bytes
from normlab.bench.report import bandwidth_json, bandwidth_ratios, bandwidth_table
from normlab.errors import UsageError

TINY = (4, 3, 8, 8)
QUICK = {"repeats": 2, "warmup": 1, "number": 2}


def test_floor_bytes_counts_tensor_sized_reads_and_writes() -> None:
    numel = 2 * 3 * 4 * 5
    assert floor_bytes(numel, 4, bandwidth.FORWARD_UNITS) == 2 * 120 * 4
    assert floor_bytes(numel, 4, bandwidth.FORWARD_BACKWARD_UNITS) == 5 * 120 * 4
    assert floor_bytes(numel, 2, bandwidth.COPY_UNITS) == 2 * 120 * 2


@pytest.mark.parametrize(
    ("name", "gbps"),
    [
        ("NVIDIA H200", 4800.0),
        ("NVIDIA H100 80GB HBM3", 3350.0),
        ("NVIDIA H100 PCIe", 2000.0),
        ("NVIDIA A100-SXM4-80GB", 2039.0),
        ("NVIDIA GeForce RTX 4090", None),
        (None, None),
    ],
)
def test_datasheet_peak_by_device_name(name: str | None, gbps: float | None) -> None:
    assert datasheet_gbps(name) == gbps


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 0, 4, 4), (1, 3, 1, 1)])
def test_bad_shapes_are_usage_errors(shape: tuple[int, ...]) -> None:
    with pytest.raises(UsageError, match="--shape"):
        check_shape(shape)


def test_unknown_dtype_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown dtype 'int8'"):
        bench_bandwidth(TINY, dtype="int8")


class _Counting(normlab.nn.BatchNorm2d):
    calls = 0

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return super().forward(input)


def test_every_candidate_is_timed_with_its_bytes_and_gbps() -> None:
    ours = types.SimpleNamespace(BatchNorm2d=_Counting)
    result = bench_bandwidth(TINY, ours_lib=ours, **QUICK)
    names = [p.name for p in result.passes]
    assert names == [
        "copy",
        "normlab forward",
        "normlab forward+backward",
        "torch forward",
        "torch forward+backward",
    ]
    # warm-up + repeats x number calls, forward alone and inside forward+backward
    assert _Counting.calls == 2 * (1 + 2 * 2)
    numel = 4 * 3 * 8 * 8
    assert result.by_name("copy").bytes == 2 * numel * 4
    assert result.by_name("torch forward+backward").bytes == 5 * numel * 4
    for p in result.passes:
        assert p.seconds.min <= p.seconds.median <= p.seconds.max
        assert p.gbps == pytest.approx(p.bytes / p.seconds.median / 1e9)
    assert result.datasheet_gbps is None and result.device == "cpu"
    ratios = bandwidth_ratios(result)
    fwd = result.by_name("normlab forward").seconds.median
    assert ratios["forward"] == pytest.approx(fwd / result.by_name("torch forward").seconds.median)
    assert set(ratios) == {"forward", "forward+backward"}
    table = bandwidth_table(result)
    assert "of copy" in table and "datasheet" not in table  # no GPU: no peak column
    report = bandwidth_json(result, {"repeats": 2})
    assert report["copy_gbps"] == pytest.approx(result.copy.gbps) and len(report["passes"]) == 5


def test_half_precision_inputs_move_half_the_bytes() -> None:
    result = bench_bandwidth(TINY, dtype="bfloat16", **QUICK)
    assert result.by_name("normlab forward").bytes == 2 * 4 * 3 * 8 * 8 * 2
