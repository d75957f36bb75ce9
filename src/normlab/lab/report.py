"""The lab's report: tables, figures and findings of every experiment in one document.

:func:`experiment_rows` gives each experiment's table (the same rows the commands print
in the terminal); :func:`build_report` assembles a :class:`~normlab.report.Report` from
the summaries; :func:`write_study_outputs` writes results.json, the figures (PNG),
report.html (self-contained) and report.md into a run directory.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from normlab.lab.cells import to_jsonable
from normlab.lab.conclusions import Finding, all_findings, findings_for
from normlab.report import Column, Report
from normlab.report.stats import MeanStd, format_duration, format_mean_std

__all__ = ["build_report", "experiment_rows", "write_study_outputs"]

RESULTS_FILE = "results.json"

INTRODUCTIONS = {
    "compare": (
        "The same LeNet (sigmoid, average pooling, SGD with momentum) with each "
        "normalization in place of the tutorial's batch norm, several seeds. `torch-batch` "
        "is torch.nn's batch norm, the reference for normlab's `batch`; `none` is the plain "
        "network."
    ),
    "sweep-lr": (
        "With and without batch norm over a log grid of learning rates, with ReLU (as "
        "Inception): the plain sigmoid LeNet does not leave its initial plateau at any rate "
        "in this budget (see the comparison), which would say nothing about rates. A run "
        "*diverged* when its loss became infinite or NaN; it *learned* when it finished more "
        "than 5 points above chance. Ioffe & Szegedy (2015) claim that batch norm allows "
        "much higher learning rates."
    ),
    "sweep-batch-size": (
        "Every arm trained on the same number of examples at each batch size (smaller "
        "batches take more steps), with the learning rate scaled linearly with the batch "
        "size, with ReLU (as Wu & He's ResNet). Accuracy in eval mode uses the running "
        "statistics, as a deployed model "
        "does; the batch-statistics accuracy normalises test batches of the training "
        "batch size by their own statistics. Wu & He (2018) report batch norm degrading "
        "at small batches while group norm does not."
    ),
    "probe": (
        "What batch norm changes inside the network, with the tutorial's sigmoid and with "
        "ReLU (Santurkar et al.'s VGG): the pre-activations of each layer on a fixed batch "
        "of training images (Ioffe & Szegedy's 'internal covariate shift' picture: "
        "percentiles, spread, and the fraction of flat units: a sigmoid within 0.05 of 0 "
        "or 1, a ReLU at 0), and Santurkar et al. (2018)'s loss-landscape measures: "
        "stepping along the gradient by several step sizes, the range of the loss (loss "
        "variation), the largest change of the gradient (ℓ2) and that change per unit "
        "step (effective β-smoothness)."
    ),
    "placement": (
        "The norm right before the activation (Ioffe & Szegedy, the tutorial) or right "
        "after it, for the sigmoid and for ReLU."
    ),
    "momentum": (
        "Batch norm's running averages follow the batch statistics with momentum m "
        "(torch's convention: the weight of the new batch); until they catch up, eval "
        "mode runs a different network than the one trained. Measured early in training: "
        "test accuracy in eval mode against accuracy with the test batches' own "
        "statistics."
    ),
}


def _pm(stat: Mapping[str, Any], scale: float = 100.0, unit: str = "%") -> str | None:
    """``"87.3 ± 0.4 %"`` from a mean_std dict (None when nothing finished)."""
    if stat["mean"] is None:
        return None
    return format_mean_std(
        MeanStd(scale * stat["mean"], scale * stat["std"], stat["n"]), digits=3, unit=unit
    )


def _stat(values: Sequence[float | None]) -> dict[str, Any]:
    from normlab.lab.common import mean_std_dict

    return mean_std_dict(values)


def experiment_rows(name: str, summary: Mapping[str, Any]) -> tuple[list[dict], list[Column]]:
    """The rows and columns of an experiment's table."""
    if name == "compare":
        rows = [
            {
                "norm": norm,
                "accuracy": _pm(s["final_test_accuracy"]),
                "loss": _pm(s["final_test_loss"], 1.0, ""),
                "train_loss": _pm(s["final_train_loss"], 1.0, ""),
                "seconds": _pm(s["seconds_per_epoch"], 1.0, "s"),
                "diverged": f"{s['diverged']}/{s['seeds']}",
            }
            for norm, s in summary["norms"].items()
        ]
        columns = [
            Column("norm"),
            Column("accuracy", "test accuracy", align="right"),
            Column("loss", "test loss", align="right"),
            Column("train_loss", "train loss", align="right"),
            Column("seconds", "time / epoch", align="right"),
            Column("diverged", "diverged", align="right"),
        ]
        return rows, columns
    if name == "sweep-lr":
        rows = []
        for norm, points in summary["norms"].items():
            for p in points:
                rows.append(
                    {
                        "norm": norm,
                        "lr": p["lr"],
                        "accuracy": _pm(p["test_accuracy"]),
                        "loss": _pm(p["test_loss"], 1.0, ""),
                        "diverged": f"{p['diverged']}/{p['seeds']}",
                        "learned": f"{p['learned']}/{p['seeds']}",
                    }
                )
        columns = [
            Column("norm"),
            Column("lr", "learning rate", fmt="g"),
            Column("accuracy", "test accuracy", align="right"),
            Column("loss", "test loss", align="right"),
            Column("diverged", "diverged", align="right"),
            Column("learned", "learned", align="right"),
        ]
        return rows, columns
    if name == "sweep-batch-size":
        rows = []
        for arm, points in summary["arms"].items():
            for p in points:
                rows.append(
                    {
                        "arm": arm,
                        "batch_size": p["batch_size"],
                        "lr": p["lr"],
                        "steps": p["steps"][0] if p["steps"] else None,
                        "eval": _pm(p["eval_accuracy"]),
                        "batch": _pm(p["batch_stats_accuracy"]),
                        "diverged": f"{p['diverged']}/{p['seeds']}",
                    }
                )
        columns = [
            Column("arm", "norm"),
            Column("batch_size", "batch"),
            Column("lr", "lr", fmt=".4g"),
            Column("steps", "steps"),
            Column("eval", "eval-mode accuracy", align="right"),
            Column("batch", "batch-stats accuracy", align="right"),
            Column("diverged", "diverged", align="right"),
        ]
        return rows, columns
    if name == "probe":
        rows = []
        for activation, group in summary["activations"].items():
            for norm, s in group["norms"].items():
                t = s["trajectory_mean"]
                layers = s["layers"]
                flat = max(v["saturation"]["mean"][-1] for v in layers.values()) if layers else None
                rows.append(
                    {
                        "activation": activation,
                        "norm": norm,
                        "loss_variation": t.get("loss_variation"),
                        "gradient_change": t.get("gradient_change"),
                        "beta": t.get("beta_smoothness"),
                        "flat": flat,
                        "accuracy": _pm(_stat(s["final_test_accuracy"])),
                    }
                )
        columns = [
            Column("activation"),
            Column("norm"),
            Column("loss_variation", "loss variation"),
            Column("gradient_change", "gradient change"),
            Column("beta", "β-smoothness"),
            Column("flat", "max saturated/inactive (end)", fmt="percent"),
            Column("accuracy", "test accuracy", align="right"),
        ]
        return rows, columns
    if name == "placement":
        rows = [
            {
                "activation": r["activation"],
                "placement": r["placement"],
                "accuracy": _pm(r["test_accuracy"]),
                "loss": _pm(r["test_loss"], 1.0, ""),
                "diverged": f"{r['diverged']}/{r['seeds']}",
            }
            for r in summary["rows"]
        ]
        columns = [
            Column("activation"),
            Column("placement", "norm placed"),
            Column("accuracy", "test accuracy", align="right"),
            Column("loss", "test loss", align="right"),
            Column("diverged", "diverged", align="right"),
        ]
        return rows, columns
    if name == "momentum":
        rows = [
            {
                "momentum": m["momentum"],
                "max_gap": None if m["max_gap_after_start"] is None else m["max_gap_after_start"],
                "closed": m["closed_at_step"],
                "forget": m["steps_to_forget"],
                "end_eval": m["eval_accuracy"]["mean"][-1] if m["eval_accuracy"]["mean"] else None,
                "end_batch": (
                    m["batch_stats_accuracy"]["mean"][-1]
                    if m["batch_stats_accuracy"]["mean"]
                    else None
                ),
            }
            for m in summary["momenta"]
        ]
        columns = [
            Column("momentum", "BN momentum", fmt="g"),
            Column("max_gap", "largest gap", fmt="percent"),
            Column("closed", "gap first closed at step"),
            Column("forget", "closed form t95", fmt=".0f"),
            Column("end_eval", "eval acc (end)", fmt="percent"),
            Column("end_batch", "batch-stats acc (end)", fmt="percent"),
        ]
        return rows, columns
    raise ValueError(f"unknown experiment {name!r}")


def _finding_items(findings: Sequence[Finding]) -> list[str]:
    items = []
    for f in findings:
        if f.claim:
            items.append(f"{f.text} Literature: {f.claim} Verdict: {f.verdict}.")
        else:
            items.append(f.text)
    return items


def build_report(
    summaries: Mapping[str, Mapping[str, Any]],
    figures: Mapping[str, Sequence[tuple[Path, str]]],
    *,
    title: str,
    timing: Mapping[str, Any] | None = None,
) -> tuple[Report, list[Finding]]:
    """The report of a study: a summary of the findings, then one section per experiment
    (introduction, figures, table, findings), then how it was run."""
    from normlab.lab.study import EXPERIMENTS

    findings = all_findings(summaries)
    dataset = next(iter(summaries.values()))["config"]["dataset"] if summaries else "?"
    subtitle = f"LeNet on {dataset}; " + ", ".join(
        f"{EXPERIMENTS[n].title.lower()}" for n in summaries
    )
    report = Report(title, subtitle=subtitle)
    claims = [f for f in findings if f.claim]
    if claims:
        report.section("Findings against the literature")
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
    for name, summary in summaries.items():
        report.section(EXPERIMENTS[name].title)
        report.paragraph(INTRODUCTIONS[name])
        report.paragraph(_settings_text(summary["config"]))
        for path, caption in figures.get(name, []):
            report.figure(path, caption=caption)
        rows, columns = experiment_rows(name, summary)
        report.table(rows, columns, caption=f"{EXPERIMENTS[name].title}: mean ± std over seeds.")
        mine = findings_for(name, summary)
        if mine:
            report.bullets(_finding_items(mine))
    if timing:
        report.section("How this was run")
        report.paragraph(
            f"{timing['cells']} cells (one experiment x one setting x one seed); this "
            f"invocation computed {timing['cells_computed']} and found "
            f"{timing['cells_loaded']} already finished. Wall time "
            f"{format_duration(timing['wall_seconds'])} with {timing.get('threads')} torch "
            f"thread(s) per worker, {timing.get('workers', 1)} worker process(es), on "
            f"{platform.machine()} with {_cpu_count()} CPUs"
            + (
                f" (load average over the last 15 minutes: {timing['load_average'][2]:.1f})."
                if timing.get("load_average")
                else "."
            )
        )
        report.table(
            [
                {"experiment": n, "seconds": s.get("cell_seconds"), "cells": s.get("cells")}
                for n, s in summaries.items()
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
    summaries: Mapping[str, Mapping[str, Any]],
    *,
    title: str,
    timing: Mapping[str, Any] | None = None,
) -> tuple[list[Finding], Path, Path]:
    """Write figures/*.png, results.json, report.html and report.md into ``run_dir``."""
    from normlab.lab.plots import compact_png, experiment_figures
    from normlab.train.atomic import write_bytes_atomic, write_text_atomic

    figures: dict[str, list[tuple[Path, str]]] = {}
    for name, summary in summaries.items():
        for stem, fig, caption in experiment_figures(name, summary):
            path = write_bytes_atomic(run_dir / "figures" / f"{stem}.png", compact_png(fig))
            figures.setdefault(name, []).append((path, caption))
    report, findings = build_report(summaries, figures, title=title, timing=timing)
    results = {
        "summaries": summaries,
        "findings": [
            {"experiment": f.experiment, "text": f.text, "claim": f.claim,
             "verdict": f.verdict, "numbers": f.numbers}
            for f in findings
        ],
        "timing": dict(timing or {}),
    }  # fmt: skip
    text = json.dumps(to_jsonable(results), indent=1, allow_nan=True, default=_as_text)
    write_text_atomic(run_dir / RESULTS_FILE, text + "\n")
    html = report.write_html(run_dir / "report.html")
    md = report.write_markdown(run_dir / "report.md")
    return findings, html, md


def _as_text(value: Any) -> str:
    """What JSON cannot hold otherwise (e.g. a Path a plug-in arm returned), as text."""
    return str(value)
