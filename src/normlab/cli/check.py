"""``normlab check``: every normlab layer against its oracle on this machine.

The oracle is the ``torch.nn`` twin of the same name, or for the layers ``torch.nn`` lacks,
the ``torch.nn`` layer they reduce to or the paper's formula (named in each row).

Runs the grid of :mod:`normlab.testing.parity` (three training steps, an eval step and a
``state_dict`` round trip per configuration) once per code path (the fused CPU kernels of
:mod:`normlab.kernels` and the tensor code) and prints one row per layer and dtype with
the largest differences. Exit codes: 0 all equal within tolerance, 1 any failure,
2 a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from normlab.testing.parity import Result, Summary

_DTYPES = {"float32": ("float32",), "float64": ("float64",), "both": ("float32", "float64")}
_CODE = {
    "kernels": "normlab's fused CPU kernels (normlab.kernels)",
    "tensors": "normlab's tensor code (normlab.functional)",
}
_CUDA_KERNELS = (
    "normlab's Triton kernels: batch, instance, layer, group norm (normlab.kernels.triton)"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "check",
        help="check every layer against torch.nn or its oracle (forward, gradients, buffers, "
        "state_dict)",
        description=(
            "Run every normlab layer and its oracle (its torch.nn twin, or for layers torch.nn "
            "lacks the torch.nn layer they reduce to or the paper's formula, named in the "
            "table) over a grid of configurations: "
            "three training steps, an eval step and a state_dict round trip each; print the "
            "largest differences. Exit code 1 if any configuration differs."
        ),
    )
    parser.add_argument(
        "--dtype", choices=tuple(_DTYPES), default="both", help="dtypes to check (default both)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--code",
        choices=("both", *_CODE),
        default="both",
        help="which implementation to check: the fused CPU kernels, the tensor code, or both "
        "(default; on CUDA, or without built kernels, the tensor code alone)",
    )
    parser.add_argument(
        "--layers",
        metavar="NAME,...",
        help="comma-separated class names, e.g. LayerNorm,GroupNorm (default: all)",
    )
    parser.set_defaults(func=run)
    return parser


def _device(name: str) -> object:
    import torch

    from normlab.errors import UsageError

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {name!r}; use --device cpu (or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda") and not getattr(torch, device.type).is_available():
        raise UsageError(f"device {name!r} is not available on this machine; use --device cpu")
    return device


def _code_paths(code: str, device: object) -> list[str]:
    """The code paths to check: ``kernels`` only where they can run (built, CPU)."""
    from normlab import kernels
    from normlab.errors import UsageError

    usable = kernels.runs_on(device)
    if code == "kernels" and not usable:
        raise UsageError(
            "normlab's kernels run on the CPU once built (make kernels in a checkout, else "
            "python -m normlab.kernels.cpu --cache) and on CUDA with "
            "Triton installed; use --code tensors"
        )
    if code == "both":
        return ["kernels", "tensors"] if usable else ["tensors"]
    return [code]


def _format_diff(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.1e}"


def _table(rows: Sequence[Summary]) -> list[str]:
    header = ("layer", "dtype", "configs", "forward", "grad", "buffers", "result", "oracle")
    body = [
        (
            row.layer,
            str(row.dtype).removeprefix("torch."),
            str(row.configurations),
            _format_diff(row.forward_diff),
            _format_diff(row.grad_diff),
            _format_diff(row.buffer_diff),
            ("pass" if row.failed == 0 else f"FAIL ({row.failed})")
            + (f", {row.skipped} skipped" if row.skipped else ""),
            row.oracle,
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    lines = []
    for line in (header, *body):
        cells = [
            cell.ljust(width) if i in (0, 1, 6, 7) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return lines


def _failures(results: Sequence[Result]) -> list[str]:
    lines = []
    for result in results:
        if result.passed:
            continue
        dtype = str(result.dtype).removeprefix("torch.")
        reasons = [result.error] if result.error else list(result.details)
        lines.append(f"FAIL {result.config.name} [{dtype}]: {'; '.join(reasons[:3])}")
    return lines


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from normlab import kernels
    from normlab.testing import parity

    layers = None
    if args.layers is not None:
        layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    parity.configurations(layers)  # unknown names: a one-line error before any work
    device = _device(args.device)
    paths = _code_paths(args.code, device)
    dtypes = [getattr(torch, name) for name in _DTYPES[args.dtype]]

    def progress(work: Sequence[object]) -> object:
        return tqdm(work, desc="normlab check", unit="config", leave=False, disable=None)

    print(f"normlab layers against torch {torch.__version__} on {device}")
    print("differences: max|normlab - oracle| / max(1, max|oracle|) over all steps")
    results: list[Result] = []
    for path in paths:
        kernels.set_enabled(path == "kernels")
        try:
            path_results = parity.run_grid(layers, dtypes, device, progress=progress)
        finally:
            kernels.set_enabled(True)
        print()
        on_cuda = path == "kernels" and torch.device(device).type == "cuda"
        print(f"code: {_CUDA_KERNELS if on_cuda else _CODE[path]}")
        for line in _table(parity.summarize(path_results)):
            print(line)
        results += path_results
    print()
    tolerances = ", ".join(
        f"{str(d).removeprefix('torch.')} {parity.TOLERANCES[d]:g}" for d in dtypes
    )
    failures = _failures(results)
    if failures:
        for line in failures:
            print(line)
        print(f"{len(failures)} of {len(results)} checks FAILED (tolerance {tolerances})")
        return 1
    skipped = sorted({r.skipped for r in results if r.skipped is not None})
    compared = len(results) - sum(r.skipped is not None for r in results)
    print(
        f"all {compared} checks pass (tolerance {tolerances}; code: {', '.join(paths)}): "
        "outputs, input and parameter gradients, buffers over 3 training steps and eval; "
        "state_dict both ways"
    )
    if skipped:
        print(f"{len(results) - compared} skipped: {'; '.join(skipped)}")
    sys.stdout.flush()
    return 0
