"""Column sets shared by the terminal tables and the reports, so both read the same."""

from __future__ import annotations

from normlab.report.stats import format_bytes
from normlab.report.tables import Column

SHIFT_COLUMNS = [  # rows: normlab.lab.experiments.shift.summary_rows
    Column("stage"),
    Column("train_mean", "train mean", ".3f"),
    Column("train_std", "train std", ".3f"),
    Column("test_mean", "test mean", ".3f"),
    Column("test_std", "test std", ".3f"),
    Column("ks", "KS D", ".3f"),
    Column("p", "p-value", "pvalue"),
]

TUTORIAL_COLUMNS = [  # rows: normlab.tutorial.pipeline.summary_rows
    Column("arm"),
    Column("test_accuracy", "test accuracy (%)", ".2f"),
    Column("test_loss", "test loss", ".4f"),
    Column("train_loss", "train loss", ".4f"),
    Column("seconds_per_epoch", "s / epoch", ".2f"),
    Column("peak_memory", "peak memory", format_bytes),
    Column("status"),
]
