"""Benchmark results as terminal tables and as JSON-ready dicts (no measuring here)."""

from __future__ import annotations

import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from normlab.bench.bandwidth import BandwidthResult
from normlab.bench.layers import LayerResult, geometric_mean
from normlab.bench.table import format_table
from normlab.bench.timing import Ratio, Summary
from normlab.bench.train import TrainResult


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def _ratio(ratio: Ratio | None) -> str:
    """``median [min-max]`` of the per-repeat ratios, headed by the ratio of medians."""
    if ratio is None:
        return "-"
    r = ratio.per_repeat
    return f"{ratio.of_medians:.2f} [{r.min:.2f}-{r.max:.2f}]"


def _ms(summary: Summary | None) -> str:
    return "-" if summary is None else f"{summary.median * 1e3:.3f}"


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f}"


def _verdict(result: LayerResult) -> str:
    met = result.targets_met()
    missed = [name for name, ok in met.items() if not ok]
    return "ok" if not missed else "MISSED " + ",".join(missed)


def layers_table(results: Sequence[LayerResult]) -> str:
    """One row per (layer, shape): times, ratios ``median [min-max]``, saved KiB, targets."""
    compiled = any(r.compiled is not None for r in results)
    headers = ["layer", "shape", "ours ms", "torch ms", "eager ratio"]
    if compiled:
        headers += ["ours-c ms", "torch-c ms", "compiled ratio", "ours-c/torch"]
    headers += ["saved KiB ours", "torch", "targets"]
    rows = []
    for r in results:
        row = [r.module, _shape(r.shape), _ms(r.ours_eager), _ms(r.torch_eager), _ratio(r.eager)]
        if compiled:
            row += [
                _ms(r.ours_compiled),
                _ms(r.torch_compiled),
                _ratio(r.compiled),
                _ratio(r.compiled_vs_eager),
            ]
        row += [_kib(r.saved_ours), _kib(r.saved_torch), _verdict(r)]
        rows.append(row)
    return format_table(headers, rows)


def summarize(results: Sequence[LayerResult]) -> dict[str, dict[str, Any]]:
    """Per layer, over its shapes: median, geometric mean and worst of the median ratios,
    the targets, and on how many shapes it saves more bytes for backward than torch."""
    summary: dict[str, dict[str, Any]] = {}
    for layer in dict.fromkeys(r.layer for r in results):
        mine = [r for r in results if r.layer == layer]
        entry: dict[str, Any] = {
            "shapes": len(mine),
            "eager": _over_shapes([r.eager.of_medians for r in mine]),
            "eager_target": mine[0].eager_target,
            "saves_more_than_torch": sum(r.saved_ours > r.saved_torch for r in mine),
        }
        compiled = [r.compiled.of_medians for r in mine if r.compiled is not None]
        if compiled:
            entry["compiled"] = _over_shapes(compiled)
            entry["compiled_target"] = mine[0].compiled_target
        summary[layer] = entry
    return summary


def _over_shapes(ratios: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(ratios),
        "geo_mean": geometric_mean(ratios),
        "worst": max(ratios),
    }


def layers_summary(results: Sequence[LayerResult]) -> str:
    """One line per layer: :func:`summarize` in words."""

    def words(stats: dict[str, float]) -> str:
        return ", ".join(f"{k.replace('_', '-')} {v:.2f}" for k, v in stats.items())

    lines = []
    for layer, entry in summarize(results).items():
        text = f"{layer}: eager ratio {words(entry['eager'])} (target <= {entry['eager_target']})"
        if "compiled" in entry:
            text += f"; compiled {words(entry['compiled'])}"
            if entry["compiled_target"] is not None:
                text += f" (target <= {entry['compiled_target']})"
        text += (
            f"; saves more than torch on {entry['saves_more_than_torch']} of "
            f"{entry['shapes']} shapes"
        )
        lines.append(text)
    return "\n".join(lines)


def _ratio_dict(ratio: Ratio | None) -> dict[str, Any] | None:
    if ratio is None:
        return None
    return {
        "numerator": ratio.numerator,
        "denominator": ratio.denominator,
        "of_medians": ratio.of_medians,
        "per_repeat": asdict(ratio.per_repeat),
        "of_minimums": ratio.of_minimums,
    }


def _seconds(summary: Summary | None) -> dict[str, float] | None:
    return None if summary is None else asdict(summary)


def layers_json(results: Sequence[LayerResult], settings: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, in seconds per forward+backward and bytes."""
    return {
        "benchmark": "layers",
        "machine": machine(),
        "settings": settings,
        "summary": summarize(results),
        "results": [
            {
                "layer": r.layer,
                "module": r.module,
                "shape": list(r.shape),
                "seconds": {
                    "ours": _seconds(r.ours_eager),
                    "torch": _seconds(r.torch_eager),
                    "ours_compiled": _seconds(r.ours_compiled),
                    "torch_compiled": _seconds(r.torch_compiled),
                },
                "ratio": {
                    "eager": _ratio_dict(r.eager),
                    "compiled": _ratio_dict(r.compiled),
                    "compiled_vs_eager": _ratio_dict(r.compiled_vs_eager),
                },
                "saved_bytes": {"ours": r.saved_ours, "torch": r.saved_torch},
                "targets": {
                    "eager": r.eager_target,
                    "compiled": r.compiled_target,
                    "met": r.targets_met(),
                },
            }
            for r in results
        ],
    }


def train_table(result: TrainResult) -> str:
    """Images per second (median [min-max] over chunks) and speed ratios."""
    rows = [
        [
            name,
            f"{s.median:,.0f}",
            f"{s.min:,.0f}-{s.max:,.0f}",
        ]
        for name, s in result.images_per_second.items()
    ]
    table = format_table(["candidate", "images/s", "range"], rows)
    ratios = format_table(
        ["speed ratio", "of medians", "per chunk [min-max]", "best chunks", "target"],
        [
            [
                name,
                f"{r.of_medians:.2f}x",
                f"{r.per_repeat.median:.2f} [{r.per_repeat.min:.2f}-{r.per_repeat.max:.2f}]",
                f"{r.of_minimums:.2f}x",
                _train_target(name, result),
            ]
            for name, r in result.speedup.items()
        ],
    )
    return f"{table}\n\n{ratios}"


def _train_target(name: str, result: TrainResult) -> str:
    for label, ok in result.targets_met.items():
        if label.startswith(name + " "):
            return f"{label.split(' ', 1)[1]}: {'ok' if ok else 'MISSED'}"
    return "-"


def train_json(result: TrainResult, settings: dict[str, Any]) -> dict[str, Any]:
    """Images per second per candidate and the speed ratios (above 1: the first is faster)."""
    return {
        "benchmark": "train",
        "machine": machine(),
        "settings": settings,
        "data": result.data,
        "steps": result.steps,
        "chunk": result.chunk,
        "images_per_second": {k: asdict(v) for k, v in result.images_per_second.items()},
        "speed_ratio": {
            name: {
                "of_medians": r.of_medians,
                "per_chunk": asdict(r.per_repeat),
                "of_best_chunks": r.of_minimums,  # fastest chunk of each
            }
            for name, r in result.speedup.items()
        },
        "targets_met": result.targets_met,
    }


def _percent(part: float, whole: float | None) -> str:
    return "-" if not whole else f"{100 * part / whole:.0f}%"


def bandwidth_table(result: BandwidthResult) -> str:
    """One row per candidate: median ms, achieved GB/s, share of the copy and of the peak."""
    copy = result.copy.gbps
    rows = [
        [
            p.name,
            f"{p.seconds.median * 1e3:.3f}",
            f"{p.bytes / 1e6:,.0f}",
            f"{p.gbps:,.1f}",
            _percent(p.gbps, copy),
            _percent(p.gbps, result.datasheet_gbps),
        ]
        for p in result.passes
    ]
    headers = ["candidate", "ms", "MB moved", "GB/s", "of copy", "of datasheet"]
    if result.datasheet_gbps is None:  # not a GPU we know: no column of dashes
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    return format_table(headers, rows)


def bandwidth_ratios(result: BandwidthResult) -> dict[str, float]:
    """Time ratios normlab / torch per pass (below 1: normlab is faster)."""
    ratios = {}
    for p in result.passes:
        if p.name.startswith("normlab"):
            twin = result.by_name("torch" + p.name[len("normlab") :])
            ratios[p.name[len("normlab ") :]] = p.seconds.median / twin.seconds.median
    return ratios


def bandwidth_json(result: BandwidthResult, settings: dict[str, Any]) -> dict[str, Any]:
    """Seconds, bytes and GB/s of every candidate; the copy ceiling and the datasheet peak."""
    return {
        "benchmark": "bandwidth",
        "machine": machine(),
        "settings": settings,
        "shape": list(result.shape),
        "dtype": result.dtype,
        "copy_gbps": result.copy.gbps,
        "datasheet_gbps": result.datasheet_gbps,
        "passes": [
            {"name": p.name, "seconds": asdict(p.seconds), "bytes": p.bytes, "gbps": p.gbps}
            for p in result.passes
        ],
        "time_ratio": bandwidth_ratios(result),
    }
