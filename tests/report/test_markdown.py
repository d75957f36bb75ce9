"""The Markdown report: figures as PNG files linked relatively, text escaped, GFM tables."""

from __future__ import annotations

import re
from pathlib import Path

from normlab.report import Column, Report
from normlab.report.markdown import escape_markdown, inline_markdown


def test_markdown_links_existing_pngs(small_figure, tmp_path: Path, check_png) -> None:
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    inside = run / "plots" / "loss.png"
    small_figure.savefig(inside, format="png")
    outside = tmp_path / "elsewhere.png"
    small_figure.savefig(outside, format="png")

    report = Report("T").section("S")
    report.figure(inside, "inside the run").figure(outside, "outside (copied)")
    report.figure(small_figure, "a live figure", name="shift")
    path = report.write_markdown(run / "report.md")

    text = path.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["plots/loss.png", "figure-2-outside-copied.png", "shift.png"]
    for link in links:
        assert not Path(link).is_absolute()
        check_png((run / link).read_bytes())
    assert (run / "figure-2-outside-copied.png").read_bytes() == outside.read_bytes()
    assert "*Figure 3.* a live figure" in text


def test_markdown_tables_and_escaping(tmp_path: Path) -> None:
    report = Report("Results *bold* <b>", subtitle="seed 0")
    report.section("Tables").paragraph("Run `normlab shift --seed 1` then compare a_b | c.")
    report.table(
        [{"norm": "batch|x", "acc": 0.8843}, {"norm": "none", "acc": None}],
        [Column("norm"), Column("acc", "test acc", fmt="percent")],
        caption="Final",
    )
    report.bullets(["one", "two"]).code("$ normlab shift\n```inner```")
    text = report.write_markdown(tmp_path / "r.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == r"# Results \*bold\* \<b\>"
    assert "Run `normlab shift --seed 1` then compare a\\_b \\| c." in lines
    table = [line for line in lines if line.startswith("|")]
    assert table == [
        "| norm | test acc |",
        "|:---|---:|",
        "| batch\\|x | 88.4 % |",
        "| none | — |",
    ]
    assert "**Table 1.** Final" in lines
    assert "- one" in lines and "- two" in lines
    assert "````text" in lines  # the fence is longer than any run of backticks inside
    assert lines[-1].startswith("*Made with normlab ")


def test_inline_markdown() -> None:
    assert escape_markdown("a*b_c [x](y) #1") == r"a\*b\_c \[x\]\(y\) \#1"
    assert inline_markdown("use `x*y` not x*y") == r"use `x*y` not x\*y"
    assert inline_markdown("a ` lone") == r"a \` lone"
