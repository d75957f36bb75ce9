"""The document model: blocks in order, numbering, anchors, figure inputs, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.errors import UsageError
from normlab.report import Report, slugify
from normlab.report.document import Figure, Heading, Table


def test_blocks_are_kept_in_order_and_numbered(small_figure, check_png) -> None:
    report = Report("T")
    report.section("A").paragraph("p").table([{"x": 1}]).figure(small_figure, "one")
    report.subsection("A.1").table([{"x": 2}], caption="second").figure(small_figure, "two")
    kinds = [type(b).__name__ for b in report.blocks]
    assert kinds == ["Heading", "Paragraph", "Table", "Figure", "Heading", "Table", "Figure"]
    tables = [b for b in report.blocks if isinstance(b, Table)]
    figures = [b for b in report.blocks if isinstance(b, Figure)]
    assert [t.number for t in tables] == [1, 2] and [f.number for f in figures] == [1, 2]
    assert [h.level for h in report.blocks if isinstance(h, Heading)] == [2, 3]
    assert [h.text for h in report.sections] == ["A"]
    assert check_png(figures[0].png)[0] > 0


def test_table_cells_are_formatted_when_added() -> None:
    rows = [{"x": 0.123456}]
    report = Report("T").table(rows)
    rows[0]["x"] = 99.0  # later changes do not leak into the report
    (table,) = report.blocks
    assert isinstance(table, Table) and table.data.cells == [["0.1235"]]


def test_anchors_are_unique_slugs() -> None:
    report = Report("T").section("Results & plots").section("Results & plots").section("!!")
    assert [h.anchor for h in report.sections] == ["results-plots", "results-plots-2", "section"]
    assert slugify("Before: Ünïcode, 100 %") == "before-n-code-100"


def test_figure_from_path_bytes_and_figure(tmp_path: Path, small_figure) -> None:
    png_path = tmp_path / "f.png"
    small_figure.savefig(png_path, format="png")
    report = Report("T")
    report.figure(png_path, "from a path").figure(png_path.read_bytes(), "from bytes")
    report.figure(small_figure, "from a figure", name="Loss curve")
    report.figure(small_figure, "again", name="Loss curve")
    a, b, c, d = report.blocks
    assert a.source == png_path and a.png == png_path.read_bytes()
    assert b.source is None and b.png == a.png
    assert (c.name, d.name) == ("loss-curve", "loss-curve-2")
    assert a.name == "figure-1-from-a-path"


def test_figure_errors(tmp_path: Path) -> None:
    report = Report("T")
    with pytest.raises(UsageError, match="does not exist"):
        report.figure(tmp_path / "missing.png", "x")
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(UsageError, match="is not a PNG file"):
        report.figure(tmp_path / "fake.png", "x")
    with pytest.raises(TypeError, match="matplotlib Figure, a PNG path or PNG bytes"):
        report.figure(42, "x")  # type: ignore[arg-type]


def test_text_must_be_text() -> None:
    with pytest.raises(TypeError, match="paragraph must be a str"):
        Report("T").paragraph(3.0)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="no items"):
        Report("T").bullets([])
