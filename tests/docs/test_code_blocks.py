"""Every ```python block of the documentation runs, so that no example can rot.

The pages are README.md and every ``docs/**/*.md``. Each ```python (or ```py) block is
one test, named ``<page>:<line of its opening fence>``. The blocks of one page run in
order in one namespace, as a reader types them: a block may use what an earlier block of
its page defined. A test selected alone runs the earlier blocks of its page first. Each
page runs in its own empty working directory, so files an example writes (``runs/``,
reports) land there.

A block that cannot run here opts out in its fence, with the reason beside it::

    ```python no-run: needs a CUDA device

Anything else after ``python`` in the fence is an error: a typo must not silence a block.
"""

from __future__ import annotations

import os
import re
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON_LANGUAGES = {"python", "py"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
NO_RUN = re.compile(r"^no-run\s*:\s*(?P<reason>\S.*)$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block of a Markdown page: where it opens, its language, its code."""

    page: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    language: str
    options: str  # the rest of the fence's info string
    code: str

    @property
    def test_id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def is_python(self) -> bool:
        return self.language in PYTHON_LANGUAGES

    @property
    def skip_reason(self) -> str | None:
        """The reason given by ``no-run: <reason>``; None for a block that runs.

        Raises:
            ValueError: the fence has options that are not ``no-run: <reason>``.
        """
        if not self.options:
            return None
        match = NO_RUN.match(self.options)
        if match is None:
            raise ValueError(
                f"{self.test_id}: fence options {self.options!r} not understood; a block "
                "that cannot run says so as ```python no-run: <the reason>"
            )
        return match["reason"]


def fenced_blocks(text: str, page: str) -> list[CodeBlock]:
    """Every fenced code block of a Markdown text, in order (CommonMark's fence rules:
    a closing fence uses the opening character at least as many times; the opening
    fence's indentation is removed from the code lines)."""
    blocks: list[CodeBlock] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None or ("`" in opening["info"] and opening["fence"][0] == "`"):
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        language, _, options = opening["info"].strip().partition(" ")
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(_dedent(lines[j], indent))
            j += 1
        blocks.append(CodeBlock(page, i + 1, language.lower(), options.strip(), "\n".join(body)))
        i = j + 1
    return blocks


def _dedent(line: str, indent: int) -> str:
    """``line`` without up to ``indent`` leading spaces (those of its fence)."""
    strip = len(line) - len(line.lstrip(" "))
    return line[min(strip, indent) :]


def documentation_pages() -> list[Path]:
    """README.md and every Markdown page of the site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks() -> list[CodeBlock]:
    """Every ```python block of every page."""
    blocks: list[CodeBlock] = []
    for path in documentation_pages():
        page = path.relative_to(ROOT).as_posix()
        blocks.extend(
            b for b in fenced_blocks(path.read_text(encoding="utf-8"), page) if b.is_python
        )
    return blocks


@dataclass
class PageSession:
    """The shared namespace of one page's blocks and how far they have run.

    The namespace is a module registered in ``sys.modules``, so that what a page defines
    behaves as if imported: dataclasses, pickling, ``typing.get_type_hints``.
    """

    workdir: Path
    module: types.ModuleType
    done: int = 0  # blocks of the page run so far
    failed: CodeBlock | None = None

    @property
    def namespace(self) -> dict[str, Any]:
        return self.module.__dict__


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def execute(block: CodeBlock, namespace: dict[str, Any]) -> None:
    """Run one block as a reader would: no ``from __future__`` import of this file applies
    to it, and its tracebacks point at the page and its line numbers."""
    source = "\n" * block.line + block.code  # the code's first line is the fence's next
    code = compile(source, str(ROOT / block.page), "exec", dont_inherit=True)
    exec(code, namespace)


BLOCKS = python_blocks()
PAGE_BLOCKS: dict[str, list[CodeBlock]] = {}
for _block in BLOCKS:
    PAGE_BLOCKS.setdefault(_block.page, []).append(_block)
SESSIONS: dict[str, PageSession] = {}


def _session(page: str, factory: pytest.TempPathFactory) -> PageSession:
    if page not in SESSIONS:
        slug = re.sub(r"\W", "_", page)
        module = types.ModuleType(f"normlab_docs_{slug}", f"The examples of {page}.")
        sys.modules[module.__name__] = module
        SESSIONS[page] = PageSession(factory.mktemp(slug), module)
    return SESSIONS[page]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.test_id for b in BLOCKS])
def test_code_block_runs(block: CodeBlock, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The block runs after the blocks before it on its page (each block runs once)."""
    reason = block.skip_reason
    if reason is not None:
        pytest.skip(f"not runnable here: {reason}")
    session = _session(block.page, tmp_path_factory)
    if session.failed is not None:
        pytest.fail(f"an earlier block of the page failed: {session.failed.test_id}")
    page_blocks = PAGE_BLOCKS[block.page]
    position = page_blocks.index(block)
    with working_directory(session.workdir):
        for earlier in page_blocks[session.done : position + 1]:
            if earlier.skip_reason is None:
                try:
                    execute(earlier, session.namespace)
                except BaseException:
                    session.failed = earlier
                    raise
            session.done += 1


def test_the_documentation_has_python_blocks() -> None:
    """The collection found the pages' examples (a broken parser would find none)."""
    pages = {b.page for b in BLOCKS}
    assert "README.md" in pages
    assert len(pages) >= 5, pages


def test_every_opt_out_gives_a_reason() -> None:
    for block in BLOCKS:
        block.skip_reason  # noqa: B018  (raises on options other than no-run: <reason>)


PAGE = """\
Text.

```python
a = 1
```

- a list item:

  ```py
  b = a + 1
  ```

````markdown
```python
not a block of its own
```
````

```python no-run: needs a GPU
import cuda_only
```

```bash
make test
```
"""


def test_fenced_blocks_follow_commonmark() -> None:
    blocks = fenced_blocks(PAGE, "page.md")
    assert [(b.line, b.language) for b in blocks] == [
        (3, "python"),
        (9, "py"),
        (13, "markdown"),
        (19, "python"),
        (23, "bash"),
    ]
    assert blocks[1].code == "b = a + 1"  # the list item's indentation removed
    assert blocks[2].code == "```python\nnot a block of its own\n```"
    assert [b.is_python for b in blocks] == [True, True, False, True, False]
    assert blocks[3].skip_reason == "needs a GPU"
    assert blocks[0].skip_reason is None


@pytest.mark.parametrize("options", ["no-run", "no-run:", "norun: reason", "{.python}"])
def test_an_opt_out_without_a_reason_is_refused(options: str) -> None:
    block = CodeBlock("page.md", 1, "python", options, "x = 1")
    with pytest.raises(ValueError, match=r"page\.md:1: fence options"):
        block.skip_reason  # noqa: B018


def test_a_block_runs_without_this_file_s_future_imports() -> None:
    """Annotations in a block are evaluated, as in a reader's module (this test file's
    ``from __future__ import annotations`` must not leak into the examples)."""
    namespace: dict[str, Any] = {}
    execute(CodeBlock("page.md", 1, "python", "", "def f(x: int) -> None: ...\n"), namespace)
    assert namespace["f"].__annotations__["x"] is int


def test_a_page_runs_in_order_in_one_namespace(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {}
    first, second = (b for b in fenced_blocks(PAGE, "page.md")[:2])
    execute(first, namespace)
    execute(second, namespace)
    assert namespace["b"] == 2


def test_a_failing_block_names_its_page_and_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    block = CodeBlock(str(page), 4, "python", "", "x = 1\nraise KeyError('boom')")
    with pytest.raises(KeyError) as info:
        execute(block, {})
    frame = info.traceback[-1]
    assert (str(frame.path), frame.lineno + 1) == (str(page), 6)
