"""Tables: one column model for the terminal, HTML and Markdown, and the terminal formatter.

A table is a list of rows (dicts) and a list of columns. A column is a key, or a
:class:`Column` with a header and a format. Every renderer formats cells with
:func:`format_cell`, so a number reads the same in the terminal and in the report.

Example:
    >>> rows = [{"norm": "batch", "acc": 0.8843, "s": 2.31}, {"norm": "none", "acc": 0.8, "s": 1.9}]
    >>> print(format_table(rows, [Column("norm"), Column("acc", "test acc", fmt="percent"),
    ...                           Column("s", "s/epoch", fmt=".1f")]))
    norm   test acc  s/epoch
    -----  --------  -------
    batch    88.4 %      2.3
    none     80.0 %      1.9
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from normlab.errors import UsageError
from normlab.report.stats import (
    MISSING,
    MeanStd,
    format_fixed,
    format_number,
    format_percent,
    format_pvalue,
)

__all__ = ["Column", "ColumnSpec", "TableData", "format_cell", "format_table", "normalize_table"]

Formatter = str | Callable[[Any], str] | None


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Args:
        key: the row key the cells come from.
        header: the text above the column. Default: the key.
        fmt: how cells are written: ``None`` (default) picks by type (4 significant
            digits for floats, see :func:`normlab.report.stats.format_number`); ``"percent"``
            shows a fraction as ``88.4 %``; ``"pvalue"`` as a p-value; any other string is
            a Python format spec (``".3f"``, ``".2e"``, ``","``); a callable gets the value
            and returns the text. ``None`` values are always ``—``.
        align: ``"left"``, ``"right"`` or ``None`` (default: right when every cell is a
            number, left otherwise).
    """

    key: str
    header: str | None = None
    fmt: Formatter = None
    align: str | None = None

    @property
    def title(self) -> str:
        return self.key if self.header is None else self.header


ColumnSpec = str | Column


def format_cell(value: Any, fmt: Formatter = None) -> str:
    """The text of one cell (see :class:`Column` for ``fmt``)."""
    if value is None:
        return MISSING
    if callable(fmt):
        return str(fmt(value))
    if isinstance(value, MeanStd):
        return value.format()
    if fmt is None:
        return format_number(value)
    if fmt == "percent":
        return format_percent(float(value))
    if fmt == "pvalue":
        return format_pvalue(float(value))
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        spec = fmt.rstrip()
        if spec.startswith(".") and spec.endswith("f") and spec[1:-1].isdigit():
            return format_fixed(float(value), int(spec[1:-1]))  # no "-0.000"
        return format(float(value) if isinstance(value, float) else value, fmt)
    return format(value, fmt) if isinstance(value, str) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real | MeanStd) and not isinstance(value, bool)


@dataclass(frozen=True)
class TableData:
    """A validated table with every cell already written as text."""

    headers: list[str]
    cells: list[list[str]]  # [row][column]
    right: list[bool]  # per column: right-aligned (numbers)


def normalize_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[ColumnSpec] | None = None
) -> TableData:
    """Check the rows against the columns and format every cell.

    Args:
        rows: one mapping per row.
        columns: keys or :class:`Column` objects. Default: the keys of the first row.

    Raises:
        UsageError: no columns, or a row that lacks one of the column keys.
    """
    if isinstance(rows, Mapping) or not all(isinstance(row, Mapping) for row in rows):
        raise UsageError("table rows must be a list of dicts, one per row")
    if columns is None:
        if not rows:
            raise UsageError("a table with no rows needs its columns given explicitly")
        columns = list(rows[0].keys())
    cols = [c if isinstance(c, Column) else Column(str(c)) for c in columns]
    if not cols:
        raise UsageError("a table needs at least one column")
    for index, row in enumerate(rows):
        missing = [c.key for c in cols if c.key not in row]
        if missing:
            raise UsageError(
                f"table row {index} has no {missing[0]!r}; its keys: {', '.join(map(str, row))}"
            )
    cells = [[format_cell(row[c.key], c.fmt) for c in cols] for row in rows]
    right = []
    for c in cols:
        if c.align is not None:
            if c.align not in ("left", "right"):
                raise UsageError(f"column {c.key!r}: align must be 'left' or 'right'")
            right.append(c.align == "right")
        else:
            values = [row[c.key] for row in rows if row[c.key] is not None]
            right.append(bool(values) and all(_is_number(v) for v in values))
    return TableData([c.title for c in cols], cells, right)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[ColumnSpec] | None = None,
    title: str | None = None,
) -> str:
    """A plain-text table for the terminal: a header, a rule, numbers right-aligned.

    Args:
        rows: one mapping per row.
        columns: keys or :class:`Column` objects. Default: the keys of the first row.
        title: an optional line above the table.

    Returns:
        The table as lines joined by ``\\n`` (no trailing newline).
    """
    table = normalize_table(rows, columns)
    widths = [max([len(h), *(len(r[i]) for r in table.cells)]) for i, h in enumerate(table.headers)]

    def line(texts: list[str]) -> str:
        parts = [
            text.rjust(width) if right else text.ljust(width)
            for text, width, right in zip(texts, widths, table.right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [title] if title else []
    lines.append(line(table.headers))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(cells) for cells in table.cells)
    return "\n".join(lines)
