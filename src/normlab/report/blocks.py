"""The blocks a report is made of: headings, paragraphs, bullets, code, tables, figures.

Plain frozen dataclasses, filled by :class:`normlab.report.document.Report` and read by the
renderers (:mod:`normlab.report.html`, :mod:`normlab.report.markdown`), which see a report
as a :class:`Document`: what they read of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from normlab.report.tables import TableData

__all__ = ["Block", "Bullets", "Code", "Document", "Figure", "Heading", "Paragraph", "Table"]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int  # 2: a section, 3: a subsection (the title is level 1)
    anchor: str  # unique id within the report, for links and the table of contents


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Code:
    text: str  # shown verbatim in a monospace block: commands, printed output


@dataclass(frozen=True)
class Table:
    data: TableData
    caption: str | None
    number: int  # "Table 1", "Table 2", ... in order of appearance


@dataclass(frozen=True)
class Figure:
    png: bytes  # a complete PNG file
    caption: str
    name: str  # file stem for the Markdown renderer's PNG
    number: int  # "Figure 1", ...
    source: Path | None  # the PNG file it came from, if any (Markdown links it in place)


Block = Heading | Paragraph | Bullets | Code | Table | Figure


class Document(Protocol):
    """What the renderers read of a report (:class:`normlab.report.document.Report` is one):
    its title lines, its blocks in order, and its level-2 headings (the contents)."""

    @property
    def title(self) -> str: ...
    @property
    def subtitle(self) -> str | None: ...
    @property
    def footer(self) -> str: ...
    @property
    def blocks(self) -> Sequence[Block]: ...
    @property
    def sections(self) -> list[Heading]: ...
