"""normlab bench fusion: fused LeNet inference against unfused, timed and checked."""

from __future__ import annotations

import json

import pytest
import torch

from normlab.bench import fusion
from normlab.cli.main import main
from normlab.errors import UsageError
from normlab.testing.tolerance import unit_roundoff

QUICK = {"repeats": 1, "warmup": 0, "target_seconds": 0.0005, "progress": False}


def test_each_norm_and_batch_size_is_a_row_whose_models_agree_to_rounding() -> None:
    result = fusion.bench_fusion(batch_sizes=(1, 8), **QUICK)
    assert [(row.norm, row.batch_size) for row in result.rows] == [
        ("batch", 1),
        ("batch", 8),
        ("torch-batch", 1),
        ("torch-batch", 8),
    ]
    for row in result.rows:
        assert row.unfused.median > 0 and row.fused.median > 0
        assert row.ratio.median == pytest.approx(row.fused.median / row.unfused.median)
        # logits of a float32 LeNet (dot products of at most 256 terms of sigmoids times
        # weights below 1): a fused model off by more than rounding is a wrong fusion
        assert row.max_difference < 256 * 16 * unit_roundoff(torch.float32)
    table = fusion.fusion_table(result)
    assert "fused/unfused" in table and "torch-batch" in table


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(UsageError, match="batch sizes must be at least 1"):
        fusion.bench_fusion(batch_sizes=(0,), **QUICK)


def test_cli_prints_json_rows(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "fusion", "--quick", "--json", "--batch-sizes", "2", "--repeats", "1"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["batch_size"] for row in data["rows"]] == [2, 2]
    assert data["settings"]["batch_sizes"] == [2]


def test_cli_refuses_a_bad_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "fusion", "--batch-sizes", "1,,2"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
