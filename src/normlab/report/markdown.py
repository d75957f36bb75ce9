"""A :class:`~normlab.report.document.Report` as Markdown, figures as relative PNG links.

A figure that came from a PNG file inside the Markdown file's directory is linked where it
is; any other figure is written next to the Markdown file as ``<name>.png``. Text is
escaped so that Markdown shows it literally; spans in backticks stay code; in a table cell,
a ``[text](#anchor)`` span stays a link within the document.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from normlab.report.blocks import (
    Bullets,
    Code,
    Figure,
    Heading,
    Paragraph,
    Table,
)
from normlab.report.html import split_links
from normlab.train.atomic import write_bytes_atomic

if TYPE_CHECKING:
    from normlab.report.blocks import Block, Document

__all__ = [
    "cell_markdown",
    "escape_markdown",
    "inline_markdown",
    "render_markdown",
    "write_markdown",
]

_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def escape_markdown(text: str) -> str:
    """Backslash-escape the characters Markdown (CommonMark + GFM tables) would interpret;
    newlines become spaces so a paragraph stays one block."""
    return _SPECIAL.sub(r"\\\1", " ".join(text.splitlines()))


def inline_markdown(text: str) -> str:
    """Escape ``text``, keeping spans in backticks as code spans."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    out = []
    for index, part in enumerate(parts):
        if index % 2:
            fence = "``" if "`" in part else "`"
            out.append(f"{fence}{part}{fence}")
        else:
            out.append(escape_markdown(part))
    return "".join(out)


def cell_markdown(text: str) -> str:
    """A table cell: escaped text, each ``[text](#anchor)`` span kept a link."""
    out = []
    for part in split_links(text):
        if isinstance(part, str):
            out.append(escape_markdown(part))
        else:
            label, anchor = part
            out.append(f"[{escape_markdown(label)}]({anchor})")
    return "".join(out)


def _table(block: Table) -> str:
    data = block.data
    lines = []
    if block.caption is not None:
        lines += [f"**Table {block.number}.** {inline_markdown(block.caption)}", ""]
    lines.append("| " + " | ".join(inline_markdown(h) for h in data.headers) + " |")
    lines.append("|" + "|".join("---:" if right else ":---" for right in data.right) + "|")
    lines.extend("| " + " | ".join(cell_markdown(c) for c in row) + " |" for row in data.cells)
    return "\n".join(lines)


def _block(block: Block, links: dict[int, str]) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {inline_markdown(block.text)}"
    if isinstance(block, Paragraph):
        return inline_markdown(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {inline_markdown(item)}" for item in block.items)
    if isinstance(block, Code):
        fence = "```"
        while fence in block.text:
            fence += "`"
        return f"{fence}text\n{block.text.rstrip()}\n{fence}"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        alt = escape_markdown(block.caption.replace("`", ""))
        link = links[block.number].replace(" ", "%20").replace("(", "%28").replace(")", "%29")
        return f"![{alt}]({link})\n\n*Figure {block.number}.* {inline_markdown(block.caption)}"
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(report: Document, links: dict[int, str]) -> str:
    """The report as Markdown. ``links`` maps each figure number to its relative path."""
    lines = [f"# {inline_markdown(report.title)}"]
    if report.subtitle:
        lines.append(f"*{inline_markdown(report.subtitle)}*")
    lines.extend(_block(block, links) for block in report.blocks)
    lines.append(f"---\n\n*{inline_markdown(report.footer)}*")
    return "\n\n".join(lines) + "\n"


def _figure_files(report: Document, directory: Path) -> dict[int, str]:
    """Link each figure: in place when its source PNG is under ``directory``, else write it."""
    links: dict[int, str] = {}
    root = directory.resolve()
    for block in report.blocks:
        if not isinstance(block, Figure):
            continue
        source = block.source.resolve() if block.source is not None else None
        if source is not None and source.is_relative_to(root) and source.is_file():
            links[block.number] = source.relative_to(root).as_posix()
            continue
        target = directory / f"{block.name}.png"
        if not (target.is_file() and target.read_bytes() == block.png):
            write_bytes_atomic(target, block.png)
        links[block.number] = target.name
    return links


def write_markdown(report: Document, path: Path) -> Path:
    """Write ``report`` to ``path`` and the figures it needs beside it; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    links = _figure_files(report, path.parent)
    return write_bytes_atomic(path, render_markdown(report, links).encode("utf-8"))
