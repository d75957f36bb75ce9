"""The lab's report: tables, figures and findings of every experiment in one document.

Nothing here knows an experiment by name: each section is written from its
:class:`~normlab.lab.experiment.Experiment` (title, introduction, figures, table,
findings), and the report opens with the where-and-when guide: every experiment's
:meth:`~normlab.lab.experiment.Experiment.guide` rows in the order of
:data:`normlab.lab.guide.SITUATIONS`, each row's evidence linked to its experiment's
section. :func:`build_report` assembles a :class:`~normlab.report.Report` from the
results; :func:`write_study_outputs` writes results.json, the figures (PNG), report.html
(self-contained) and report.md into a run directory.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normlab.data.sources import SPECS
from normlab.lab.cells import config_dict, to_jsonable
from normlab.lab.experiment import Experiment, ExperimentConfig, ExperimentResult, TableSpec
from normlab.lab.guide import SITUATIONS, GuideRow
from normlab.lab.plan import experiment_named
from normlab.lab.verdicts import Finding
from normlab.report import Column, Report
from normlab.report.stats import format_duration

__all__ = [
    "GUIDE_TITLE",
    "GuideEntry",
    "StudyTiming",
    "all_findings",
    "build_report",
    "experiment_table",
    "guide_entries",
    "study_subtitle",
    "write_study_outputs",
]

RESULTS_FILE = "results.json"
GUIDE_TITLE = "Where and when to normalize"
FINDINGS_TITLE = "Findings against the literature"
TIMING_TITLE = "How this was run"


@dataclass(frozen=True)
class StudyTiming:
    """How one invocation of a study ran (the report's last section)."""

    wall_seconds: float
    cells: int  # every cell of the plan
    workers: int  # processes computing cells at once
    load_average: list[float] | None  # the machine's 1/5/15-minute load (None: no such OS call)
    cells_computed: int  # by this invocation
    cells_loaded: int  # found finished in the run directory
    threads: int | None  # torch threads per process (None: torch's default)


def experiment_table(result: ExperimentResult) -> TableSpec:
    """The rows and columns of an experiment's table (terminal and report)."""
    return experiment_named(result.experiment).table(result.summary)


def all_findings(results: Mapping[str, ExperimentResult]) -> list[Finding]:
    """The findings of every experiment in ``results``, in the experiments' order."""
    out: list[Finding] = []
    for name, result in results.items():
        out.extend(experiment_named(name).findings(result.summary))
    return out


@dataclass(frozen=True)
class GuideEntry:
    """A guide row with the experiment it comes from (its evidence links to that section)."""

    row: GuideRow
    experiment: Experiment


def guide_entries(results: Mapping[str, ExperimentResult]) -> list[GuideEntry]:
    """Every experiment's guide rows in the order of
    :data:`~normlab.lab.guide.SITUATIONS` (within one situation: the plan's order, then
    the experiment's own); situations no experiment in ``results`` answers are absent."""
    entries = [
        GuideEntry(row, experiment_named(name))
        for name, result in results.items()
        for row in experiment_named(name).guide(result.summary)
    ]
    return sorted(entries, key=lambda e: SITUATIONS.index(e.row.situation))


def _section_anchors(titles: Sequence[str]) -> dict[str, str]:
    """The anchor each section title gets when the report's sections are added in this
    order (the report's own rule, duplicates numbered)."""
    scratch = Report("anchors")
    for title in titles:
        scratch.section(title)
    return {title: heading.anchor for title, heading in zip(titles, scratch.sections, strict=True)}


def _link(title: str, anchors: Mapping[str, str]) -> str:
    """``[title](#anchor)``: rendered as a link to that section."""
    return f"[{title}](#{anchors[title]})"


def _guide_table(report: Report, entries: Sequence[GuideEntry], anchors: Mapping[str, str]) -> None:
    report.section(GUIDE_TITLE)
    report.paragraph(
        "One row per situation a run of this study measured, in a fixed order; situations "
        "whose experiment did not run are left out. The recommendation, the evidence and the "
        "verdict are computed from this run's numbers (a row the seeds do not decide says it "
        "is inconclusive); the evidence links to the experiment's section."
    )
    rows = [
        {
            "situation": e.row.situation,
            "recommendation": e.row.recommendation,
            "evidence": f"{e.row.evidence} {_link(e.experiment.title, anchors)}",
            "literature": e.row.literature,
            "verdict": e.row.verdict,
        }
        for e in entries
    ]
    report.table(
        rows,
        [Column("situation"), Column("recommendation", "recommended"), Column("evidence"),
         Column("literature"), Column("verdict")],
        caption="Where and when to normalize, from this run's measurements.",
    )  # fmt: skip


def _finding_items(findings: Sequence[Finding]) -> list[str]:
    items = []
    for f in findings:
        if f.claim:
            items.append(f"{f.text} Literature: {f.claim} Verdict: {f.verdict}.")
        else:
            items.append(f.text)
    return items


def study_subtitle(configs: Mapping[str, ExperimentConfig]) -> str:
    """The line under the study's title, from the configs run (experiment name ->
    config): the networks they train (each named once, in the order the experiments
    first use them, :meth:`Experiment.models`), the datasets, and the experiments'
    titles: ``"LeNet and vision transformer on Fashion-MNIST; which normalization?,
    normalization in a transformer"``."""
    experiments = {name: experiment_named(name) for name in configs}
    models = dict.fromkeys(
        model for name, config in configs.items() for model in experiments[name].models(config)
    )
    datasets = dict.fromkeys(_dataset_title(config.dataset) for config in configs.values())
    titles = ", ".join(e.title.lower() for e in experiments.values())
    return f"{_and(list(models))} on {_and(list(datasets))}; {titles}"


def _dataset_title(name: str) -> str:
    """``"Fashion-MNIST"`` for ``"fashion-mnist"``; an unknown name as it is."""
    spec = SPECS.get(name)
    return name if spec is None else spec.display_name


def _and(words: Sequence[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"`` (``"?"`` for none)."""
    if not words:
        return "?"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def build_report(
    summaries: Mapping[str, ExperimentResult],
    figures: Mapping[str, Sequence[tuple[Path, str]]],
    *,
    title: str,
    timing: StudyTiming | None = None,
) -> tuple[Report, list[Finding]]:
    """The report of a study: the where-and-when guide, a summary of the findings, then
    one section per experiment (introduction, figures, table, findings), then how it was
    run."""
    findings = all_findings(summaries)
    experiments: dict[str, Experiment] = {n: experiment_named(n) for n in summaries}
    subtitle = study_subtitle({name: result.config for name, result in summaries.items()})
    report = Report(title, subtitle=subtitle)
    claims = [f for f in findings if f.claim]
    entries = guide_entries(summaries)
    anchors = _section_anchors(
        [*([GUIDE_TITLE] if entries else []), *([FINDINGS_TITLE] if claims else []),
         *(e.title for e in experiments.values()), *([TIMING_TITLE] if timing else [])]
    )  # fmt: skip
    if entries:
        _guide_table(report, entries, anchors)
    if claims:
        report.section(FINDINGS_TITLE)
        report.paragraph(
            "Every sentence below is generated from this run's numbers; the verdict compares "
            "it with the cited paper's claim. These are small LeNets on a CPU budget, not "
            "the papers' ImageNet networks: where they differ, the data is reported as it is."
        )
        report.table(
            [
                {"experiment": f.experiment, "finding": f.text, "claim": f.claim,
                 "verdict": f.verdict}
                for f in claims
            ],
            [Column("experiment"), Column("finding"), Column("claim", "literature"),
             Column("verdict")],
        )  # fmt: skip
    for name, result in summaries.items():
        experiment = experiments[name]
        report.section(experiment.title)
        report.paragraph(experiment.introduction)
        report.paragraph(_settings_text(config_dict(result.config)))
        for path, caption in figures.get(name, []):
            report.figure(path, caption=caption)
        table = experiment.table(result.summary)
        report.table(
            table.rows, table.columns, caption=f"{experiment.title}: mean ± std over seeds."
        )
        mine = experiment.findings(result.summary)
        if mine:
            report.bullets(_finding_items(mine))
    if timing is not None:
        report.section(TIMING_TITLE)
        report.paragraph(
            f"{timing.cells} cells (one experiment x one setting x one seed); this "
            f"invocation computed {timing.cells_computed} and found "
            f"{timing.cells_loaded} already finished. Wall time "
            f"{format_duration(timing.wall_seconds)} with {timing.threads} torch "
            f"thread(s) per worker, {timing.workers} worker process(es), on "
            f"{platform.machine()} with {_cpu_count()} CPUs"
            + (
                f" (load average over the last 15 minutes: {timing.load_average[2]:.1f})."
                if timing.load_average
                else "."
            )
        )
        report.table(
            [
                {"experiment": n, "seconds": r.cell_seconds, "cells": r.cells}
                for n, r in summaries.items()
            ],
            [
                Column("experiment"),
                Column("seconds", "compute time (s)", fmt=".1f"),
                Column("cells"),
            ],
            caption="Compute time per experiment, summed over its cells (across resumes).",
        )
    return report, findings


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def _settings_text(config: Mapping[str, Any]) -> str:
    parts = []
    for key in ("seeds", "epochs", "train_subset", "test_subset", "batch_size", "lr"):
        if key in config and config[key] is not None:
            parts.append(f"{key.replace('_', ' ')} {config[key]}")
    return "Settings: " + ", ".join(parts) + "."


def write_study_outputs(
    run_dir: Path,
    summaries: Mapping[str, ExperimentResult],
    *,
    title: str,
    timing: StudyTiming | None = None,
) -> tuple[list[Finding], Path, Path]:
    """Write figures/*.png, results.json, report.html and report.md into ``run_dir``."""
    from normlab.lab.figures import compact_png
    from normlab.train.atomic import write_bytes_atomic, write_text_atomic

    figures: dict[str, list[tuple[Path, str]]] = {}
    for name, result in summaries.items():
        for spec in experiment_named(name).figures(result.summary):
            png = compact_png(spec.figure)
            path = write_bytes_atomic(run_dir / "figures" / f"{spec.stem}.png", png)
            figures.setdefault(name, []).append((path, spec.caption))
    report, findings = build_report(summaries, figures, title=title, timing=timing)
    results = {
        "summaries": dict(summaries),
        "findings": list(findings),
        "timing": timing if timing is not None else {},
    }
    text = json.dumps(to_jsonable(results), indent=1, allow_nan=True, default=_as_text)
    write_text_atomic(run_dir / RESULTS_FILE, text + "\n")
    html = report.write_html(run_dir / "report.html")
    md = report.write_markdown(run_dir / "report.md")
    return findings, html, md


def _as_text(value: Any) -> str:
    """What JSON cannot hold otherwise (e.g. a Path a plug-in arm returned), as text."""
    return str(value)
