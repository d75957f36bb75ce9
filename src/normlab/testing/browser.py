"""Reports and docs pages checked in a real browser (headless Chromium through Selenium).

A page passes at a viewport width when, loaded as a reader would load it:

* the page itself never scrolls sideways:
  ``document.documentElement.scrollWidth <= window.innerWidth``;
* no element sticks out past the right edge, unless it sits inside a box that scrolls on
  its own (a wide code block, a wide numeric table);
* every table whose columns hold words (a finding, a verdict) shows all of its columns
  without scrolling; only tables of numbers may scroll inside their own box;
* every image has loaded (``naturalWidth > 0``);
* every link inside the site points to something that exists (an anchor on the page, or a
  file under the served folder);
* the browser's console shows no error.

Each width also leaves a screenshot of the first screen for a person to look at. With
``printed=True`` the page is also laid out for print (CSS ``@media print``) at the width
of an A4 page's text: nothing may stick out there either (paper does not scroll), and the
PDF that Chromium prints is kept beside the screenshots.

Used by the test suite (``tests/testing/test_browser.py``) and by ``make browser-check``::

    python -m normlab.testing.browser REPORT.html [SITE_DIR ...] --screenshots DIR

This module needs the development extra (``selenium``) and Debian's ``chromium`` and
``chromium-driver``; nothing else in normlab imports it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import re
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "WIDTHS",
    "PageCheck",
    "WidthCheck",
    "browser",
    "check_pages",
    "main",
    "serve",
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTHS = (1280, 800)
"""A laptop's width, and a narrow window (or a tablet held upright)."""
PRINT_WIDTH = 718
"""An A4 page's text width in CSS pixels: 210 mm less two 10 mm margins at 96 px per inch."""
HEIGHT = 900

# The flags that keep a headless Chromium quiet on a machine with no network and no screen.
_CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)

# Everything measured inside the page in one call. An element "overflows" when its right
# edge passes the viewport's and no ancestor scrolls horizontally (such a box keeps its
# content to itself). Only the outermost overflowing element of a subtree is reported.
_MEASURE_JS = r"""
const width = window.innerWidth;
const headings = Array.from(document.querySelectorAll('h1, h2'));
function section(el) {
  let name = '(top of the page)';
  for (const h of headings) {
    if (h.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING) {
      name = h.textContent.trim();
    }
  }
  return name;
}
function scrolls(el) {
  const x = getComputedStyle(el).overflowX;
  return x === 'auto' || x === 'scroll' || x === 'hidden';
}
function describe(el) {
  let name = el.tagName.toLowerCase();
  if (el.id) name += '#' + el.id;
  const cls = (el.getAttribute('class') || '').trim().split(/\s+/).filter(Boolean);
  if (cls.length) name += '.' + cls.slice(0, 2).join('.');
  return name;
}
const overflows = [];
function walk(el) {
  if (el !== document.body && scrolls(el)) return;
  for (const child of el.children) {
    const rect = child.getBoundingClientRect();
    if (rect.width > 0 && rect.right > width + 0.5) {
      overflows.push([section(child), describe(child), Math.round(rect.right - width)]);
    } else {
      walk(child);
    }
  }
}
walk(document.body);
const hiddenTables = [];
for (const table of document.querySelectorAll('table')) {
  const box = table.parentElement;
  const hidden = table.getBoundingClientRect().right - box.getBoundingClientRect().right;
  // a table of numbers: leading label columns, then only numbers
  const cells = Array.from(table.querySelectorAll('tbody tr:first-child td'));
  const isNumber = td => td.classList.contains('num') || /^[-+−\d.,% ±×eE]+$/.test(td.textContent);
  const first = cells.findIndex(isNumber);
  const numeric = first >= 0 && cells.slice(first).every(isNumber);
  if (hidden > 0.5 && !numeric) {
    const head = Array.from(table.querySelectorAll('thead th')).map(th => th.textContent.trim());
    const cut = Array.from(table.querySelectorAll('thead th'))
      .filter(th => th.getBoundingClientRect().right > box.getBoundingClientRect().right + 0.5)
      .map(th => th.textContent.trim());
    hiddenTables.push([section(table), head.join(' | '), cut.join(', ')]);
  }
}
const images = Array.from(document.images)
  .filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => (img.getAttribute('alt') || img.getAttribute('src') || '').slice(0, 80));
const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'));
return {
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: width,
  overflows: overflows,
  hiddenTables: hiddenTables,
  brokenImages: images,
  links: links,
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  names: Array.from(document.querySelectorAll('a[name]')).map(e => e.getAttribute('name')),
};
"""


@dataclass(frozen=True)
class Overflow:
    """An element past the right edge of the viewport, by the section it sits in."""

    section: str
    element: str
    pixels: int

    def __str__(self) -> str:
        return f"{self.element} sticks out {self.pixels} px in section {self.section!r}"


@dataclass(frozen=True)
class HiddenColumns:
    """A table of words whose last columns cannot be seen without scrolling its box."""

    section: str
    header: str
    hidden: str

    def __str__(self) -> str:
        return (
            f"table [{self.header}] in section {self.section!r} hides its column(s) "
            f"{self.hidden} behind a scrollbar"
        )


@dataclass(frozen=True)
class WidthCheck:
    """What one page looked like at one viewport width."""

    width: int
    scroll_width: int
    overflows: tuple[Overflow, ...]
    hidden_columns: tuple[HiddenColumns, ...]
    screenshot: Path | None  # a PNG of the first screen; in print, the printed PDF
    media: str = "screen"  # or "print"

    @property
    def problems(self) -> list[str]:
        found = [str(o) for o in self.overflows] + [str(h) for h in self.hidden_columns]
        if self.scroll_width > self.width and not self.overflows:
            found.append(f"the page is {self.scroll_width} px wide")
        where = f"at {self.width} px" if self.media == "screen" else f"in print ({self.width} px)"
        return [f"{where}: {p}" for p in found]


@dataclass(frozen=True)
class PageCheck:
    """One page: each width's layout, and what does not depend on the width."""

    page: str
    widths: tuple[WidthCheck, ...]
    broken_images: tuple[str, ...] = ()
    broken_links: tuple[str, ...] = ()
    console_errors: tuple[str, ...] = ()

    @property
    def problems(self) -> list[str]:
        found = [p for w in self.widths for p in w.problems]
        found += [f"image not loaded: {alt!r}" for alt in self.broken_images]
        found += [f"link to nothing: {href}" for href in self.broken_links]
        found += [f"console error: {message}" for message in self.console_errors]
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Site:
    """A folder served over HTTP on the loopback interface."""

    root: Path
    url: str
    pages: list[str] = field(default_factory=list)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` on a free loopback port for the duration of the block; yields the URL
    of the folder. (A page opened as a ``file://`` URL cannot fetch its own search index,
    so the docs site is checked as a reader gets it: over HTTP.)"""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def browser() -> Iterator[webdriver.Chrome]:
    """A headless Chromium driven by chromedriver, with the console log kept."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.exists():
            raise FileNotFoundError(
                f"{program} not found: install Debian's chromium and chromium-driver "
                "(make test does, as root)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory(prefix="normlab-chromium-") as profile:
        for flag in (*_CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def _set_width(driver: webdriver.Chrome, width: int) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )


def _broken_links(url: str, root: Path, links: Sequence[str], anchors: set[str]) -> list[str]:
    """Links that point inside the served folder to a missing file or a missing anchor of
    this page. Links to other sites are not followed (the machine may have no network)."""
    broken = []
    for href in links:
        parsed = urllib.parse.urlparse(urllib.parse.urljoin(url, href))
        if not href or parsed.scheme not in ("http", "https", "file") or href.startswith("data:"):
            continue
        if urllib.parse.urlparse(url).netloc != parsed.netloc:
            continue
        same_page = parsed.path == urllib.parse.urlparse(url).path
        if same_page:
            if parsed.fragment and urllib.parse.unquote(parsed.fragment) not in anchors:
                broken.append(href)
            continue
        target = root / urllib.parse.unquote(parsed.path).lstrip("/")
        if not (target.is_file() or (target / "index.html").is_file()):
            broken.append(href)
    return sorted(set(broken))


def _console_errors(driver: webdriver.Chrome) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _width_check(measured: dict, width: int, shot: Path | None, media: str) -> WidthCheck:
    return WidthCheck(
        width=width,
        scroll_width=int(measured["scrollWidth"]),
        overflows=tuple(Overflow(*o) for o in measured["overflows"]),
        hidden_columns=tuple(HiddenColumns(*h) for h in measured["hiddenTables"]),
        screenshot=shot,
        media=media,
    )


def _shot_path(screenshots: Path | None, root: Path, url: str, suffix: str) -> Path | None:
    if screenshots is None:
        return None
    screenshots.mkdir(parents=True, exist_ok=True)
    page = f"{root.name}/{urllib.parse.urlparse(url).path}"
    return screenshots / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', page).strip('-')}-{suffix}"


def _check_print(driver: webdriver.Chrome, url: str, pdf: Path | None) -> WidthCheck:
    """The page laid out for paper: print media at an A4 page's text width, then printed."""
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        _set_width(driver, PRINT_WIDTH)
        driver.get(url)
        measured = driver.execute_script(_MEASURE_JS)
        if pdf is not None:
            printed = driver.execute_cdp_cmd("Page.printToPDF", {"printBackground": True})
            pdf.write_bytes(base64.b64decode(printed["data"]))
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    return _width_check(measured, PRINT_WIDTH, pdf, "print")


def _check_page(
    driver: webdriver.Chrome,
    url: str,
    root: Path,
    widths: Sequence[int],
    screenshots: Path | None,
    printed: bool = False,
) -> PageCheck:
    driver.get_log("browser")  # drop what earlier pages left
    results = []
    measured: dict = {}
    for width in widths:
        _set_width(driver, width)
        driver.get(url)
        measured = driver.execute_script(_MEASURE_JS)
        shot = _shot_path(screenshots, root, url, f"{width}.png")
        if shot is not None:
            driver.save_screenshot(str(shot))
        results.append(_width_check(measured, width, shot, "screen"))
    anchors = set(measured["ids"]) | set(measured["names"])
    if printed:
        results.append(_check_print(driver, url, _shot_path(screenshots, root, url, "print.pdf")))
    return PageCheck(
        page=url,
        widths=tuple(results),
        broken_images=tuple(measured["brokenImages"]),
        broken_links=tuple(_broken_links(url, root, measured["links"], anchors)),
        console_errors=tuple(_console_errors(driver)),
    )


def _pages_of(path: Path) -> tuple[Path, list[str]]:
    """The folder to serve and the pages in it to check: a file is one page; a folder (a
    built docs site) is every ``*.html`` in it but the 404 page."""
    path = path.resolve()
    if path.is_file():
        return path.parent, [path.name]
    if path.is_dir():
        pages = sorted(
            str(p.relative_to(path)) for p in path.rglob("*.html") if p.name != "404.html"
        )
        return path, pages
    raise FileNotFoundError(f"{path} does not exist: give an HTML report or a built site folder")


def check_pages(
    paths: Sequence[Path],
    widths: Sequence[int] = WIDTHS,
    screenshots: Path | None = None,
    printed: bool = False,
) -> list[PageCheck]:
    """Open every page of ``paths`` (HTML files or site folders) in headless Chromium at
    each width (and laid out for print, with ``printed``) and check it (see the module's
    docstring)."""
    checks = []
    with browser() as driver:
        for path in paths:
            root, pages = _pages_of(path)
            with serve(root) as url:
                for page in pages:
                    check = _check_page(driver, url + page, root, widths, screenshots, printed)
                    checks.append(check)
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m normlab.testing.browser",
        description="Open HTML reports and built docs sites in headless Chromium and print "
        "what overflows the page, by section, what does not load, and console errors.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="an HTML report, or a folder of pages (a built docs site)",
    )
    parser.add_argument(
        "--widths",
        default=",".join(map(str, WIDTHS)),
        metavar="W,W",
        help="viewport widths in CSS pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--screenshots",
        type=Path,
        metavar="DIR",
        help="save each page's first screen at each width (and its printed PDF) here",
    )
    parser.add_argument(
        "--print", action="store_true", dest="printed",
        help="also lay each page out for print at an A4 page's width, and print it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        parser.error(f"--widths takes whole numbers separated by commas, got {args.widths!r}")
    try:
        checks = check_pages(args.paths, widths, args.screenshots, args.printed)
    except FileNotFoundError as error:
        print(f"browser check: {error}", file=sys.stderr)
        return 2
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.page}")
        for problem in check.problems:
            print(f"     {problem}")
    failed = sum(not c.ok for c in checks)
    where = f"at {', '.join(map(str, widths))} px" + (" and in print" if args.printed else "")
    print(f"{len(checks)} page(s) {where}: {failed} with problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
