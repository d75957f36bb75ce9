"""LeNet inference with its batch norms folded into the layers before them, against unfused.

For each norm (normlab's batch norm, torch.nn's) and batch size, the tutorial's LeNet in
evaluation mode (its batch norms holding the statistics of a few batches) and
:func:`normlab.nn.fuse_batch_norms` of it run the same input under
``torch.inference_mode``, timed interleaved (:func:`normlab.bench.timing.measure`). Fusion
removes the four batch norms' passes over the activations; the ratio fused / unfused in
time says what that saves (below 1: fused is faster). Each row also gives the largest
difference between the two models' logits, which should be rounding only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from normlab.bench.table import format_table
from normlab.bench.timing import Ratio, Summary, compare, measure
from normlab.errors import UsageError
from normlab.models.lenet import LeNet
from normlab.nn.fusion import fuse_batch_norms

BATCH_SIZES = (1, 64, 1024)
QUICK_BATCH_SIZES = (1, 64)
NORMS = ("batch", "torch-batch")  # normlab's batch norm, torch.nn's
STATISTICS_BATCHES = 3  # batches the norms see before evaluation (non-trivial statistics)


@dataclass(frozen=True)
class FusionRow:
    """One norm at one batch size: seconds per forward pass, unfused and fused."""

    norm: str
    batch_size: int
    unfused: Summary
    fused: Summary
    ratio: Ratio  # fused / unfused in time
    max_difference: float  # largest |fused - unfused| over the logits


@dataclass(frozen=True)
class FusionResult:
    rows: tuple[FusionRow, ...]
    repeats: int
    threads: int


def _models(norm: str, device: torch.device) -> tuple[LeNet, torch.nn.Module]:
    """The evaluation-mode LeNet with statistics from random batches, and its fused copy."""
    model = LeNet(norm=norm).to(device)
    with torch.no_grad():
        for _ in range(STATISTICS_BATCHES):
            model(torch.randn(64, 1, 28, 28, device=device))
    model.eval()
    return model, fuse_batch_norms(model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_fusion(
    batch_sizes: Sequence[int] = BATCH_SIZES,
    norms: Sequence[str] = NORMS,
    repeats: int = 9,
    warmup: int = 3,
    target_seconds: float = 0.05,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> FusionResult:
    """Time LeNet's inference fused against unfused, per norm and batch size.

    Raises:
        UsageError: a batch size below 1 (and ``measure``'s own checks).
    """
    for size in batch_sizes:
        if size < 1:
            raise UsageError(f"batch sizes must be at least 1, got {size}")
    device = torch.device(device)
    cells = [(norm, size) for norm in norms for size in batch_sizes]
    rows = []
    for norm, size in tqdm(cells, desc="fusion", unit="cell", disable=not progress):
        model, fused = _models(norm, device)
        x = torch.randn(size, 1, 28, 28, device=device)

        def unfused_call(model: torch.nn.Module = model, x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                return model(x)

        def fused_call(fused: torch.nn.Module = fused, x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                return fused(x)

        timings = measure(
            {"unfused": unfused_call, "fused": fused_call},
            repeats=repeats,
            warmup=warmup,
            target_seconds=target_seconds,
            sync=lambda: _sync(device),
        )
        with torch.inference_mode():
            difference = (fused(x) - model(x)).abs().max().item()
        rows.append(
            FusionRow(
                norm=norm,
                batch_size=size,
                unfused=timings["unfused"].summary,
                fused=timings["fused"].summary,
                ratio=compare(timings, "fused", "unfused"),
                max_difference=difference,
            )
        )
    return FusionResult(tuple(rows), repeats=repeats, threads=torch.get_num_threads())


def fusion_table(result: FusionResult) -> str:
    """The rows as a terminal table: microseconds per forward, the ratio, the difference."""
    headers = [
        "norm",
        "batch",
        "unfused us",
        "fused us",
        "fused/unfused",
        "[min-max]",
        "max |diff|",
    ]
    rows = [
        [
            row.norm,
            row.batch_size,
            f"{row.unfused.median * 1e6:.1f}",
            f"{row.fused.median * 1e6:.1f}",
            f"{row.ratio.median:.2f}",
            f"[{row.ratio.per_repeat.min:.2f}-{row.ratio.per_repeat.max:.2f}]",
            f"{row.max_difference:.1e}",
        ]
        for row in result.rows
    ]
    return format_table(headers, rows)


def fusion_json(result: FusionResult, settings: dict[str, object]) -> dict[str, object]:
    """The result as plain JSON data."""
    return {
        "settings": {**settings, "repeats": result.repeats, "threads": result.threads},
        "rows": [
            {
                "norm": row.norm,
                "batch_size": row.batch_size,
                "unfused_seconds": row.unfused.median,
                "fused_seconds": row.fused.median,
                "ratio_fused_over_unfused": row.ratio.median,
                "ratio_per_repeat": [row.ratio.per_repeat.min, row.ratio.per_repeat.max],
                "max_difference": row.max_difference,
            }
            for row in result.rows
        ],
    }
