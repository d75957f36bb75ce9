"""The report's document model: a title and a flat list of blocks, filled in order.

One model, two renderers: :mod:`normlab.report.html` (one self-contained file, figures
embedded as base64 PNG) and :mod:`normlab.report.markdown` (figures as PNG files linked
relatively). Text is plain: the renderers escape it; a span in backticks is code.

Example:
    >>> report = Report("normlab tutorial", subtitle="Fashion-MNIST, LeNet, 5 epochs")
    >>> _ = report.section("Covariate shift").paragraph("Train and test differ.")
    >>> _ = report.table([{"stage": "before", "ks": 0.595}], caption="KS distance")
    >>> [type(b).__name__ for b in report.blocks]
    ['Heading', 'Paragraph', 'Table']
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from normlab.errors import UsageError
from normlab.report.blocks import Block, Bullets, Code, Figure, Heading, Paragraph, Table
from normlab.report.html import render_html
from normlab.report.markdown import write_markdown
from normlab.report.tables import ColumnSpec, normalize_table
from normlab.train.atomic import write_bytes_atomic

__all__ = [
    "Block",
    "Bullets",
    "Code",
    "Figure",
    "Heading",
    "Paragraph",
    "Report",
    "Table",
    "slugify",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_DPI = 120  # a 10 x 4 inch figure is 1200 x 480 px: sharp in a browser, ~100 kB


class SavesFigures(Protocol):
    """Anything with matplotlib's ``Figure.savefig``."""

    def savefig(self, fname: Any, **kwargs: Any) -> Any: ...


def slugify(text: str, limit: int = 48) -> str:
    """Lower-case ASCII words joined by ``-``: ``slugify("Before & after!") == "before-after"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return slug or "section"


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str (got {type(value).__name__})")
    return value


def _png_from(figure: SavesFigures | str | os.PathLike[str] | bytes) -> tuple[bytes, Path | None]:
    if isinstance(figure, bytes):
        png, source = figure, None
    elif isinstance(figure, str | os.PathLike):
        source = Path(figure)
        if not source.is_file():
            raise UsageError(f"figure file {source} does not exist; save the figure first")
        png = source.read_bytes()
    elif hasattr(figure, "savefig"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight", facecolor="white")
        png, source = buffer.getvalue(), None
    else:
        raise TypeError(
            f"figure must be a matplotlib Figure, a PNG path or PNG bytes "
            f"(got {type(figure).__name__})"
        )
    if not png.startswith(PNG_SIGNATURE):
        where = f" {source}" if source else ""
        raise UsageError(f"figure{where} is not a PNG file; save it with format='png'")
    return png, source


class Report:
    """A report filled in reading order, rendered to HTML or Markdown.

    Every method that adds a block returns the report, so calls chain. Blocks added
    before the first :meth:`section` form the introduction.

    Args:
        title: the report's title (the page's ``<h1>``).
        subtitle: an optional line under the title (settings, date, machine).
        footer: the last line. Default: ``"Made with normlab <version>"``.
    """

    def __init__(self, title: str, subtitle: str | None = None, footer: str | None = None):
        from normlab import __version__

        self.title = _text(title, "title")
        self.subtitle = None if subtitle is None else _text(subtitle, "subtitle")
        self.footer = f"Made with normlab {__version__}" if footer is None else footer
        self.blocks: list[Block] = []
        self._anchors: set[str] = set()

    # ------------------------------------------------------------------ filling

    def _heading(self, title: str, level: int) -> Report:
        base = slugify(_text(title, "section title"))
        anchor, n = base, 2
        while anchor in self._anchors:
            anchor, n = f"{base}-{n}", n + 1
        self._anchors.add(anchor)
        self.blocks.append(Heading(title, level, anchor))
        return self

    def section(self, title: str) -> Report:
        """Start a section (``<h2>``); it is listed in the table of contents."""
        return self._heading(title, 2)

    def subsection(self, title: str) -> Report:
        """Start a subsection (``<h3>``) within the current section."""
        return self._heading(title, 3)

    def paragraph(self, text: str) -> Report:
        """A paragraph of plain text; spans in backticks are shown as code."""
        self.blocks.append(Paragraph(_text(text, "paragraph")))
        return self

    def bullets(self, items: Iterable[str]) -> Report:
        """A bulleted list; each item is plain text like a paragraph."""
        texts = tuple(_text(item, "bullet") for item in items)
        if not texts:
            raise UsageError("bullets() got no items; pass at least one string")
        self.blocks.append(Bullets(texts))
        return self

    def code(self, text: str) -> Report:
        """A verbatim monospace block (a command, printed output)."""
        self.blocks.append(Code(_text(text, "code")))
        return self

    def table(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[ColumnSpec] | None = None,
        caption: str | None = None,
    ) -> Report:
        """A table from a list of dicts; columns and number formats as in
        :func:`normlab.report.tables.format_table`. Cells are formatted now, so later
        changes to ``rows`` do not change the report."""
        data = normalize_table(rows, columns)
        number = 1 + sum(isinstance(b, Table) for b in self.blocks)
        caption = None if caption is None else _text(caption, "caption")
        self.blocks.append(Table(data, caption, number))
        return self

    def figure(
        self,
        figure: SavesFigures | str | os.PathLike[str] | bytes,
        caption: str,
        name: str | None = None,
    ) -> Report:
        """A figure with a caption.

        Args:
            figure: a matplotlib ``Figure`` (rendered to PNG now, at 120 dpi), the path
                of a PNG file, or PNG bytes.
            caption: what the figure shows; also its alt text.
            name: file stem for the Markdown renderer's copy. Default:
                ``figure-<n>-<slug of the caption>``.
        """
        png, source = _png_from(figure)
        number = 1 + sum(isinstance(b, Figure) for b in self.blocks)
        caption = _text(caption, "caption")
        stem = slugify(name) if name else f"figure-{number}-{slugify(caption, 32)}"
        taken = {b.name for b in self.blocks if isinstance(b, Figure)}
        base, n = stem, 2
        while stem in taken:
            stem, n = f"{base}-{n}", n + 1
        self.blocks.append(Figure(png, caption, stem, number, source))
        return self

    # ---------------------------------------------------------------- rendering

    @property
    def sections(self) -> list[Heading]:
        """The level-2 headings, in order (the table of contents)."""
        return [b for b in self.blocks if isinstance(b, Heading) and b.level == 2]

    def to_html(self) -> str:
        """The whole report as one self-contained HTML page (see :mod:`.html`)."""
        return render_html(self)

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_html` to ``path`` (atomically); returns the path."""
        return write_bytes_atomic(path, self.to_html().encode("utf-8"))

    def write_markdown(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as Markdown to ``path`` and its figures as PNG files beside it
        (see :mod:`.markdown`); returns the path."""
        return write_markdown(self, Path(path))
