"""The HTML report: self-contained, figures embedded as valid PNGs, all text escaped."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

from normlab.report import Column, Report

EVIL = '<script>alert("x")</script> & "quotes"'


class _Collector(HTMLParser):
    """Every start tag with its attributes, and the text, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(text: str) -> _Collector:
    parser = _Collector()
    parser.feed(text)
    parser.close()
    return parser


def _report(small_figure, tmp_path: Path) -> Report:
    png = tmp_path / "curve.png"
    small_figure.savefig(png, format="png")
    report = Report(f"Title {EVIL}", subtitle="seed `0`")
    report.paragraph(f"Intro with `normlab shift` and {EVIL}")
    report.section(f"Results {EVIL}")
    report.table(
        [{"name": EVIL, "acc": 0.8843}, {"name": "none", "acc": 0.81}],
        [Column("name"), Column("acc", "test acc", fmt="percent")],
        caption=EVIL,
    )
    report.figure(small_figure, f"A figure {EVIL}")
    report.section("More").figure(png, "From a file").bullets([EVIL, "b"]).code(EVIL)
    return report


def test_html_is_self_contained(small_figure, tmp_path: Path, check_png) -> None:
    path = _report(small_figure, tmp_path).write_html(tmp_path / "out" / "report.html")
    text = path.read_text(encoding="utf-8")
    parsed = _parse(text)
    tags = [tag for tag, _ in parsed.tags]
    assert "script" not in tags and "iframe" not in tags
    # the one link: an empty inline icon, so that no browser asks for /favicon.ico
    assert [attrs for tag, attrs in parsed.tags if tag == "link"] == [
        {"rel": "icon", "href": "data:,"}
    ]
    assert "@import" not in text and "url(" not in text
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 2
    for _tag, attrs in parsed.tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:image/png;base64,", "#")) or value == "data:,", value
    for attrs in images:
        data = base64.b64decode(attrs["src"].removeprefix("data:image/png;base64,"), validate=True)
        width, height = check_png(data)
        assert width > 50 and height > 50
    assert (
        base64.b64decode(images[1]["src"].split(",", 1)[1]) == (tmp_path / "curve.png").read_bytes()
    )


def test_html_escapes_all_text(small_figure, tmp_path: Path) -> None:
    text = _report(small_figure, tmp_path).to_html()
    assert "<script>" not in text
    assert text.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;") >= 6
    parsed = _parse(text)
    visible = "".join(parsed.text)
    assert visible.count(EVIL) >= 7  # title, heading, intro, cell, captions, bullet, code
    assert ("code", {}) in parsed.tags  # `normlab shift` became <code>
    assert "normlab shift" in visible


def test_html_structure(small_figure, tmp_path: Path) -> None:
    text = _report(small_figure, tmp_path).to_html()
    assert text.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in text
    assert "tbody tr:nth-child(even)" in text  # striped tables
    assert re.search(r"figure img \{[^}]*max-width: 100%", text)
    # table: caption, right-aligned numbers, percent formatting
    assert '<th class="num">test acc</th>' in text and '<td class="num">88.4 %</td>' in text
    assert '<caption><span class="label">Table 1.</span>' in text
    assert '<figcaption><span class="label">Figure 2.</span> From a file' in text
    # a table of contents linking each section
    anchors = [a["href"] for tag, a in _parse(text).tags if tag == "a"]
    ids = [a["id"] for tag, a in _parse(text).tags if tag == "h2"]
    assert anchors == [f"#{i}" for i in ids] and len(ids) == 2


def test_one_section_has_no_table_of_contents() -> None:
    text = Report("T").section("Only").paragraph("x").to_html()
    assert "<nav" not in text and '<h2 id="only">Only</h2>' in text
