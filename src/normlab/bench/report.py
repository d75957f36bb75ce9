"""Benchmark results as terminal tables and as JSON-ready dicts (no measuring here)."""

from __future__ import annotations

import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from normlab.bench.bandwidth import BandwidthResult
from normlab.bench.layers import (
    COMPILED_MEDIAN_TARGET,
    EAGER_MEDIAN_TARGET,
    EAGER_SHAPE_LIMIT,
    LayerResult,
    geometric_mean,
)
from normlab.bench.table import format_table, markdown_table
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
    """One row per (threads, layer, shape): times, ratios ``median [min-max]``, saved KiB,
    this shape's targets."""
    compiled = any(r.compiled is not None for r in results)
    headers = ["threads", "layer", "module", "shape", "ours ms", "twin ms", "eager ratio"]
    if compiled:
        headers += ["ours-c ms", "twin-c ms", "compiled ratio", "ours-c/twin"]
    headers += ["saved KiB ours", "twin", "targets"]
    rows = []
    for r in results:
        row = [
            r.threads,
            r.layer,
            r.module,
            _shape(r.shape),
            _ms(r.ours_eager),
            _ms(r.torch_eager),
            _ratio(r.eager),
        ]
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


@dataclass(frozen=True)
class OverShapes:
    """A layer's ratios over its shapes at one thread count, in one mode."""

    median: float
    geo_mean: float
    worst: float
    worst_shape: tuple[int, ...]

    @classmethod
    def of(cls, results: Sequence[LayerResult], ratio: str) -> OverShapes | None:
        pairs = [
            (getattr(r, ratio).of_medians, r.shape)
            for r in results
            if getattr(r, ratio) is not None
        ]
        if not pairs:
            return None
        ratios = [value for value, _ in pairs]
        worst, worst_shape = max(pairs)
        return cls(statistics.median(ratios), geometric_mean(ratios), worst, worst_shape)


@dataclass(frozen=True)
class LayerSummary:
    """One layer at one thread count: its ratios over shapes and whether they meet the
    targets (:data:`normlab.bench.layers.EAGER_MEDIAN_TARGET` and friends)."""

    layer: str
    module: str
    twin: str
    threads: int
    shapes: int
    eager: OverShapes
    compiled: OverShapes | None
    saves_more_than_twin: int

    def targets_met(self) -> dict[str, bool]:
        met = {
            f"eager median <= {EAGER_MEDIAN_TARGET}": self.eager.median <= EAGER_MEDIAN_TARGET,
            f"every shape <= {EAGER_SHAPE_LIMIT}": self.eager.worst <= EAGER_SHAPE_LIMIT,
            "saved bytes <= twin's": self.saves_more_than_twin == 0,
        }
        if self.compiled is not None:
            met[f"compiled median <= {COMPILED_MEDIAN_TARGET}"] = (
                self.compiled.median <= COMPILED_MEDIAN_TARGET
            )
        return met


def summarize(results: Sequence[LayerResult]) -> list[LayerSummary]:
    """Per thread count and layer, over its shapes: median, geometric mean and worst of the
    median ratios (eager, and compiled when measured), and on how many shapes it saves
    more bytes for backward than its twin."""
    summaries = []
    for threads, layer in dict.fromkeys((r.threads, r.layer) for r in results):
        mine = [r for r in results if r.threads == threads and r.layer == layer]
        eager = OverShapes.of(mine, "eager")
        assert eager is not None  # every result has an eager ratio
        summaries.append(
            LayerSummary(
                layer=layer,
                module=", ".join(dict.fromkeys(r.module for r in mine)),
                twin=", ".join(dict.fromkeys(r.twin for r in mine)),
                threads=threads,
                shapes=len(mine),
                eager=eager,
                compiled=OverShapes.of(mine, "compiled"),
                saves_more_than_twin=sum(r.saved_ours > r.saved_torch for r in mine),
            )
        )
    return summaries


def _worst(stats: OverShapes) -> str:
    return f"{stats.worst:.2f} ({_shape(stats.worst_shape)})"


def layers_summary(results: Sequence[LayerResult]) -> str:
    """One row per (threads, layer): median and worst shape of the ratios, the targets."""
    summaries = summarize(results)
    compiled = any(s.compiled is not None for s in summaries)
    headers = ["threads", "layer", "shapes", "eager median", "eager worst (shape)"]
    if compiled:
        headers += ["compiled median", "compiled worst (shape)"]
    headers += ["targets"]
    rows = []
    for s in summaries:
        row: list[object] = [s.threads, s.layer, s.shapes, f"{s.eager.median:.2f}", _worst(s.eager)]
        if compiled:
            row += [f"{s.compiled.median:.2f}", _worst(s.compiled)] if s.compiled else ["-", "-"]
        missed = [name for name, ok in s.targets_met().items() if not ok]
        row.append("ok" if not missed else "MISSED " + "; ".join(missed))
        rows.append(row)
    return format_table(headers, rows)


def _over_shapes_dict(stats: OverShapes | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {**asdict(stats), "worst_shape": list(stats.worst_shape)}


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
        "summary": [
            {
                "layer": s.layer,
                "module": s.module,
                "twin": s.twin,
                "threads": s.threads,
                "shapes": s.shapes,
                "eager": _over_shapes_dict(s.eager),
                "compiled": _over_shapes_dict(s.compiled),
                "saves_more_than_twin": s.saves_more_than_twin,
                "targets_met": s.targets_met(),
            }
            for s in summarize(results)
        ],
        "results": [
            {
                "layer": r.layer,
                "module": r.module,
                "twin": r.twin,
                "shape": list(r.shape),
                "family": r.family,
                "threads": r.threads,
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
                "targets_met": r.targets_met(),
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


RESULTS_TITLE = "# `normlab bench layers`: every layer against its twin"
RESULTS_INTRO = """\
Written by `normlab bench layers --write-results PATH --label LABEL`: each run replaces
its own section (by label) and keeps the others. Ratios are time normlab / twin for one
forward+backward (below 1: normlab is faster), the twin being the `torch.nn` layer of
the same name or, where `torch.nn` has none, the straightforward torch code of the same
formula (`normlab.bench.references`). Both are timed side by side in one process,
interleaved repeat by repeat in balanced orders; a ratio is the ratio of the two medians
over repeats. Per layer: the median of those ratios over its shapes and the worst shape.
Targets: eager median <= 1.0 and every shape <= 1.15; compiled median <= 1.0."""


def _section_markers(label: str) -> tuple[str, str]:
    return f"<!-- bench-layers: {label} -->", f"<!-- /bench-layers: {label} -->"


def layers_markdown(
    results: Sequence[LayerResult], settings: dict[str, Any], label: str, note: str = ""
) -> str:
    """A Markdown section: the run's machine and settings, per-layer summaries (median and
    worst shape) and every shape's ratio, one table each."""
    info = machine()
    summaries = summarize(results)
    compiled = any(s.compiled is not None for s in summaries)
    head = ["threads", "layer", "module", "twin", "shapes", "eager median", "eager worst"]
    head += ["compiled median", "compiled worst"] if compiled else []
    rows = []
    for s in summaries:
        row: list[object] = [s.threads, s.layer, s.module, s.twin, s.shapes]
        row += [f"{s.eager.median:.2f}", _worst(s.eager)]
        if compiled:
            row += [f"{s.compiled.median:.2f}", _worst(s.compiled)] if s.compiled else ["-", "-"]
        rows.append(row)
    shape_head = ["threads", "layer", "shape", "ours ms", "twin ms", "eager [min-max]"]
    shape_head += ["compiled [min-max]"] if compiled else []
    shape_rows = []
    for r in results:
        row = [r.threads, r.layer, _shape(r.shape), _ms(r.ours_eager), _ms(r.torch_eager)]
        row += [_ratio(r.eager)] + ([_ratio(r.compiled)] if compiled else [])
        shape_rows.append(row)
    opening, closing = _section_markers(label)
    settings_text = ", ".join(f"{k} {v}" for k, v in settings.items())
    lines = [
        opening,
        f"## {label}",
        "",
        f"torch {info['torch']}, {info['processor']}, CUDA {info['cuda'] or 'none'}; "
        f"settings: {settings_text}.",
        *([note] if note else []),
        "",
        "Per layer (ratio medians over its shapes):",
        "",
        markdown_table(head, rows),
        "",
        "Every shape (`median [min-max]` of the per-repeat ratios, headed by the ratio of "
        "the medians):",
        "",
        markdown_table(shape_head, shape_rows),
        closing,
    ]
    return "\n".join(lines)


def write_section(path: Path, label: str, section: str) -> None:
    """Put ``section`` into the results page at ``path``: in place of the section with the
    same label, else at the end (a new page starts with :data:`RESULTS_INTRO`)."""
    text = path.read_text() if path.exists() else f"{RESULTS_TITLE}\n\n{RESULTS_INTRO}\n"
    opening, closing = _section_markers(label)
    if opening in text and closing in text:
        before, rest = text.split(opening, 1)
        after = rest.split(closing, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
