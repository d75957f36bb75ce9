"""Plain-text tables for the terminal: left-aligned text, right-aligned numbers."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render ``rows`` under ``headers`` with columns padded to their widest cell.

    A column whose cells (other than the header) all look numeric is right-aligned.

    Example::

        >>> print(format_table(["a", "n"], [["x", 1.5], ["yy", 10]]))
        a     n
        --  ---
        x   1.5
        yy   10
    """
    cells = [[str(c) for c in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells for {len(headers)} columns: {row}")
    columns = list(zip(headers, *cells, strict=True)) if cells else [(h,) for h in headers]
    widths = [max(len(c) for c in column) for column in columns]
    numeric = [bool(cells) and all(_is_number(c) for c in column[1:]) for column in columns]

    def line(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = ["-" * w for w in widths]
    return "\n".join([line(list(headers)), line(rule), *(line(r) for r in cells)])


def _is_number(text: str) -> bool:
    cleaned = text.rstrip("x%").replace(",", "")
    try:
        float(cleaned)
    except ValueError:
        return False
    return True


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``rows`` under ``headers`` as a GitHub-flavoured Markdown table; a column whose cells
    all look numeric is right-aligned.

    Example::

        >>> print(markdown_table(["a", "n"], [["x", 1.5]]))
        | a | n |
        | --- | ---: |
        | x | 1.5 |
    """
    cells = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells for {len(headers)} columns: {row}")
    numeric = [
        bool(cells) and all(_is_number(row[i]) for row in cells) for i in range(len(headers))
    ]
    rule = ["---:" if num else "---" for num in numeric]
    lines = [headers, rule, *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
