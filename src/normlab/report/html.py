"""A :class:`~normlab.report.document.Report` as one self-contained HTML page.

Nothing is loaded from elsewhere: the CSS is inline, figures are ``data:image/png;base64``
images, there are no scripts, fonts or links to other sites. Every piece of text is
HTML-escaped; a span in backticks becomes ``<code>``; in a table cell, a span
``[text](#anchor)`` becomes a link to that place in the page (:func:`cell_html`; only
links within the page, so the page stays self-contained). Tables are striped, numbers
right-aligned in tabular figures, figures at most as wide as the page.

The page never scrolls sideways, at a laptop's width or a narrow window's: words in tables
wrap (a finding and its verdict stay side by side), numbers do not; a table too wide even
then scrolls inside its own box. Printing gives the whole page, tables unclipped.
"""

from __future__ import annotations

import base64
import html
import re
from typing import TYPE_CHECKING

from normlab.report.blocks import Bullets, Code, Figure, Heading, Paragraph, Table

if TYPE_CHECKING:
    from normlab.report.blocks import Block, Document

__all__ = ["CSS", "LINK", "cell_html", "inline_html", "render_html", "split_links"]

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --rule: #d1d9e0; --stripe: #f3f5f8;
        --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg);
       font: 16px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             sans-serif; }
main { max-width: 62rem; margin: 0 auto; padding: 2rem 1.25rem 3rem; }
h1 { font-size: 2rem; line-height: 1.2; margin: 0 0 .3rem; }
h2 { font-size: 1.45rem; margin: 2.5rem 0 .75rem; padding-bottom: .3rem;
     border-bottom: 1px solid var(--rule); }
h3 { font-size: 1.15rem; margin: 1.75rem 0 .5rem; }
p, ul { margin: .75rem 0; }
li { margin: .2rem 0; }
a { color: var(--accent); }
.subtitle { color: var(--muted); font-size: 1.1rem; margin: 0 0 1.5rem; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
            font-size: .9em; }
code { background: var(--stripe); padding: .1em .3em; border-radius: 4px; }
pre { background: var(--stripe); padding: .75rem 1rem; border-radius: 6px;
      overflow-x: auto; line-height: 1.45; }
nav.toc { background: var(--stripe); border-radius: 6px; padding: .6rem 1.25rem;
          margin: 1.25rem 0 2rem; }
nav.toc ol { margin: .25rem 0; padding-left: 1.25rem; }
.table-wrap { overflow-x: auto; margin: 1.25rem 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: .95rem; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: .4rem; }
th, td { padding: .4rem .8rem; text-align: left; vertical-align: top;
         border-bottom: 1px solid var(--rule); overflow-wrap: break-word; }
th { border-bottom: 2px solid var(--fg); font-weight: 600; vertical-align: bottom; }
tbody tr:nth-child(even) { background: var(--stripe); }
td.num { text-align: right; white-space: nowrap; }
th.num { text-align: right; }
@media (max-width: 60rem) { th, td { padding: .35rem .5rem; } }
figure { margin: 1.75rem 0; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: .95rem; margin-top: .5rem; }
.label { color: var(--fg); font-weight: 600; }
footer { margin-top: 3rem; padding-top: .75rem; border-top: 1px solid var(--rule);
         color: var(--muted); font-size: .85rem; }
@media print { nav.toc { display: none; } main { max-width: none; padding: 0; }
               .table-wrap { overflow: visible; } pre { white-space: pre-wrap; }
               table { font-size: .8rem; } th, td { padding: .25rem .4rem; }
               figure, tr { break-inside: avoid; } h2, h3 { break-after: avoid; } }
""".strip()


def inline_html(text: str) -> str:
    """Escape ``text`` for HTML; spans between backticks become ``<code>`` (an unpaired
    backtick stays a backtick)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # unpaired last backtick: keep it literal
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    out = []
    for index, part in enumerate(parts):
        escaped = html.escape(part, quote=True)
        out.append(f"<code>{escaped}</code>" if index % 2 else escaped)
    return "".join(out)


LINK = re.compile(r"\[([^\[\]]+)\]\((#[A-Za-z0-9_.:-]+)\)")
"""A link within the page in Markdown's form, ``[text](#anchor)``."""


def split_links(text: str) -> list[str | tuple[str, str]]:
    """``text`` cut into plain parts (``str``) and in-page links (``(text, "#anchor")``)."""
    parts: list[str | tuple[str, str]] = []
    position = 0
    for match in LINK.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()])
        parts.append((match.group(1), match.group(2)))
        position = match.end()
    if position < len(text):
        parts.append(text[position:])
    return parts


def cell_html(text: str) -> str:
    """A table cell: escaped text, with each ``[text](#anchor)`` span as ``<a>``."""
    out = []
    for part in split_links(text):
        if isinstance(part, str):
            out.append(html.escape(part))
        else:
            label, anchor = part
            out.append(f'<a href="{html.escape(anchor, quote=True)}">{html.escape(label)}</a>')
    return "".join(out)


def _table(block: Table) -> str:
    data = block.data

    def cls(index: int) -> str:
        return ' class="num"' if data.right[index] else ""

    lines = ['<div class="table-wrap"><table>']
    if block.caption is not None:
        lines.append(
            f'<caption><span class="label">Table {block.number}.</span> '
            f"{inline_html(block.caption)}</caption>"
        )
    header = "".join(f"<th{cls(i)}>{inline_html(h)}</th>" for i, h in enumerate(data.headers))
    lines.append(f"<thead><tr>{header}</tr></thead>")
    lines.append("<tbody>")
    for row in data.cells:
        cells = "".join(f"<td{cls(i)}>{cell_html(c)}</td>" for i, c in enumerate(row))
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</tbody></table></div>")
    return "\n".join(lines)


def _figure(block: Figure) -> str:
    data = base64.b64encode(block.png).decode("ascii")
    alt = html.escape(block.caption.replace("`", ""), quote=True)
    return (
        f'<figure id="figure-{block.number}">'
        f'<img src="data:image/png;base64,{data}" alt="{alt}">'
        f'<figcaption><span class="label">Figure {block.number}.</span> '
        f"{inline_html(block.caption)}</figcaption></figure>"
    )


def _block(block: Block) -> str:
    if isinstance(block, Heading):
        tag = f"h{block.level}"
        return f'<{tag} id="{html.escape(block.anchor)}">{inline_html(block.text)}</{tag}>'
    if isinstance(block, Paragraph):
        return f"<p>{inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        items = "".join(f"<li>{inline_html(item)}</li>" for item in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block)
    raise TypeError(f"unknown report block {type(block).__name__}")


def _toc(report: Document) -> str:
    sections = report.sections
    if len(sections) < 2:
        return ""
    items = "".join(
        f'<li><a href="#{html.escape(h.anchor)}">{inline_html(h.text)}</a></li>' for h in sections
    )
    return f'<nav class="toc"><strong>Contents</strong><ol>{items}</ol></nav>'


def render_html(report: Document) -> str:
    """The report as a complete HTML5 document (a ``str``)."""
    head = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(report.title)}</title>",
        '<link rel="icon" href="data:,">',  # no request for a favicon the page does not have
        f"<style>\n{CSS}\n</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<header><h1>{inline_html(report.title)}</h1>",
    ]
    if report.subtitle:
        head.append(f'<p class="subtitle">{inline_html(report.subtitle)}</p>')
    head.append("</header>")
    toc = _toc(report)
    body = [toc] if toc else []
    body.extend(_block(block) for block in report.blocks)
    tail = [f"<footer>{inline_html(report.footer)}</footer>", "</main>", "</body>", "</html>", ""]
    return "\n".join(head + body + tail)
