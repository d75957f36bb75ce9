"""The shared table model and the plain-text formatter."""

from __future__ import annotations

import numpy as np
import pytest

from normlab.errors import UsageError
from normlab.report.stats import MeanStd
from normlab.report.tables import Column, format_cell, format_table, normalize_table

ROWS = [
    {"norm": "batch", "acc": 0.8843, "loss": 0.31234, "s": 2.31, "note": None},
    {"norm": "none", "acc": 0.8, "loss": 0.5, "s": 12.0, "note": "diverged"},
]


def test_format_table_layout() -> None:
    text = format_table(
        ROWS,
        [
            Column("norm"),
            Column("acc", "test acc", fmt="percent"),
            Column("loss", "train loss"),
            Column("s", "s/epoch", fmt=".1f"),
            Column("note"),
        ],
        title="Final epoch",
    )
    assert text.splitlines() == [
        "Final epoch",
        "norm   test acc  train loss  s/epoch  note",
        "-----  --------  ----------  -------  --------",
        "batch    88.4 %      0.3123      2.3  —",
        "none     80.0 %      0.5000     12.0  diverged",
    ]


def test_default_columns_are_the_first_rows_keys() -> None:
    text = format_table([{"a": 1, "b": "x"}])
    assert text.splitlines() == ["a  b", "-  -", "1  x"]


def test_cells() -> None:
    assert format_cell(None) == "—"
    assert format_cell(-1e-17, ".3f") == "0.000"  # no negative zero
    assert format_cell(1234567, ",") == "1,234,567"
    assert format_cell(0.5, lambda v: f"<{v}>") == "<0.5>"
    assert format_cell(3.5e-154, "pvalue") == "3.5e-154"
    assert format_cell(np.float64(0.25), "percent") == "25.0 %"
    assert format_cell(MeanStd(88.41, 0.29, 3)) == "88.4 ± 0.3"
    assert format_cell(True) == "yes"


def test_alignment() -> None:
    data = normalize_table(ROWS, ["norm", "acc", "note", Column("s", align="left")])
    assert data.right == [False, True, False, False]
    assert data.headers == ["norm", "acc", "note", "s"]


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        ([{"a": 1}], ["a", "b"], "table row 0 has no 'b'; its keys: a"),
        ([], None, "needs its columns given"),
        ({"a": 1}, None, "list of dicts"),
        ([{"a": 1}], [], "at least one column"),
        ([{"a": 1}], [Column("a", align="middle")], "align must be"),
    ],
)
def test_bad_tables(rows, columns, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        format_table(rows, columns)


def test_empty_table_with_columns() -> None:
    assert format_table([], ["a", "bb"]).splitlines() == ["a  bb", "-  --"]
