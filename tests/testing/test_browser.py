"""Every kind of HTML report, opened in a real headless Chromium at 1280 and 800 px: no
page that scrolls sideways, no table of words hiding its verdict, every image loaded, every
internal link alive, no console error; a screenshot of each first screen kept in the test's
folder. The checker itself is tested first on pages built to have each defect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from normlab.cli.main import main
from normlab.testing.browser import WIDTHS, PageCheck, check_pages

TINY = ["--train-subset", "256", "--test-subset", "128", "--epochs", "1", "--no-progress"]


def _page(tmp_path: Path, body: str, name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>t</title></head><body>{body}</body></html>"
    )
    return path


def _check_one(path: Path, screenshots: Path | None = None) -> PageCheck:
    (check,) = check_pages([path], screenshots=screenshots)
    return check


def _assert_reads_well(report: Path, screenshots: Path) -> None:
    """At each width and on paper: nothing sticks out, every image, link and console
    clean; a screenshot per width and the printed PDF kept."""
    (check,) = check_pages([report], screenshots=screenshots, printed=True)
    assert check.ok, "\n".join([check.page, *check.problems])
    assert [w.media for w in check.widths] == ["screen"] * len(WIDTHS) + ["print"]
    for width in check.widths:
        assert width.screenshot is not None and width.screenshot.stat().st_size > 1000
    pdf = check.widths[-1].screenshot.read_bytes()
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") >= 2  # pages and their tree


# --- the checker, on pages built to have exactly one defect each ---------------------------


def test_checker_names_the_section_of_an_overflow(tmp_path: Path) -> None:
    page = _page(
        tmp_path,
        "<h2>Calm</h2><p>short</p><h2>Wide</h2><div style='width:1500px'>too wide</div>",
    )
    check = _check_one(page)
    at_800 = next(w for w in check.widths if w.width == 800)
    assert at_800.scroll_width > 800
    assert [(o.section, o.element) for o in at_800.overflows] == [("Wide", "div")]
    assert any("sticks out" in p and "'Wide'" in p for p in check.problems)


def test_checker_allows_a_box_that_scrolls_on_its_own(tmp_path: Path) -> None:
    page = _page(tmp_path, "<h2>Code</h2><pre style='overflow-x:auto'>" + "x" * 400 + "</pre>")
    assert _check_one(page).ok


def test_checker_finds_a_table_of_words_hiding_its_last_column(tmp_path: Path) -> None:
    words = "a finding that goes on " * 20
    table = (
        "<div style='overflow-x:auto'><table><thead><tr><th>finding</th><th>verdict</th></tr>"
        f"</thead><tbody><tr><td style='white-space:nowrap'>{words}</td><td>agrees</td></tr>"
        "</tbody></table></div>"
    )
    check = _check_one(_page(tmp_path, f"<h2>Findings</h2>{table}"))
    hidden = [h for w in check.widths for h in w.hidden_columns]
    assert hidden and all(h.section == "Findings" and "verdict" in h.hidden for h in hidden)


def test_checker_lets_a_table_of_numbers_scroll_in_its_box(tmp_path: Path) -> None:
    cells = "".join(f"<td class='num'>{i}.{i}e-05</td>" for i in range(60))
    table = f"<div style='overflow-x:auto'><table><tr><td>row</td>{cells}</tr></table></div>"
    assert _check_one(_page(tmp_path, table)).ok


def test_checker_finds_a_broken_image_a_dead_anchor_and_a_console_error(
    tmp_path: Path,
) -> None:
    page = _page(
        tmp_path,
        "<img src='missing.png' alt='lost figure'><a href='#nowhere'>x</a>"
        "<a href='other.html'>y</a><script>console.error('boom')</script>",
    )
    check = _check_one(page)
    assert check.broken_images == ("lost figure",)
    assert check.broken_links == ("#nowhere", "other.html")
    assert any("boom" in message for message in check.console_errors)


def test_checker_finds_what_only_paper_cuts_off(tmp_path: Path) -> None:
    """A box that scrolls on screen cannot scroll on paper."""
    wide = "<div class='wide'>" + "0123456789 " * 5 + "</div>"
    style = (
        "<style>.wide { width: 1000px } .box { overflow-x: auto }"
        "@media print { .box { overflow: visible } }</style>"
    )
    page = _page(tmp_path, f"{style}<h2>Paper</h2><div class='box'>{wide}</div>")
    (check,) = check_pages([page], screenshots=tmp_path / "shots", printed=True)
    screen, paper = check.widths[:-1], check.widths[-1]
    assert all(not w.problems for w in screen)
    assert paper.media == "print" and [o.section for o in paper.overflows] == ["Paper"]
    assert any(p.startswith("in print (718 px)") for p in check.problems)


def test_checker_is_satisfied_by_a_plain_page(tmp_path: Path) -> None:
    (tmp_path / "other.html").write_text("<p>there</p>")
    page = _page(tmp_path, "<h2 id='top'>A</h2><a href='#top'>up</a><a href='other.html'>o</a>")
    check = _check_one(page, screenshots=tmp_path / "shots")
    assert check.ok, check.problems
    assert [w.width for w in check.widths] == list(WIDTHS)


# --- normlab's own reports -----------------------------------------------------------------


def _only_run_dir(parent: Path) -> Path:
    (run,) = [p for p in parent.iterdir() if p.is_dir()]
    return run


def test_tutorial_report_reads_well(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    assert main(["tutorial", *TINY, "--out", str(out)]) == 0
    _assert_reads_well(_only_run_dir(out) / "report.html", tmp_path / "shots")


@pytest.mark.slow
def test_study_report_reads_well(tmp_path: Path) -> None:
    """The study's report opens with its findings table: its verdicts must be on screen."""
    out = tmp_path / "runs"
    argv = ["study", "--quick", "--seeds", "1", "--workers", "1", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    _assert_reads_well(_only_run_dir(out) / "report.html", tmp_path / "shots")


def test_single_experiment_report_reads_well(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    argv = ["compare", "--norms", "batch,layer,none", "--seeds", "1", *TINY]
    assert main([*argv, "--dataset", "synthetic", "--out", str(out)]) == 0
    _assert_reads_well(_only_run_dir(out) / "report.html", tmp_path / "shots")


@pytest.mark.slow
def test_docs_site_reads_well(tmp_path: Path) -> None:
    """Every page of the docs site, built as `make docs` builds it."""
    site = tmp_path / "site"
    root = Path(__file__).resolve().parents[2]
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
    subprocess.run([*mkdocs, "--site-dir", str(site)], cwd=root, check=True)
    checks = check_pages([site], screenshots=tmp_path / "shots")
    assert len(checks) > 10
    failed = [line for c in checks if not c.ok for line in (c.page, *c.problems)]
    assert not failed, "\n".join(failed)


def test_audit_report_reads_well(tmp_path: Path) -> None:
    """The report card of a failing layer: its pitfalls are long sentences."""
    report = tmp_path / "audit.html"
    target = ["audit", "normlab.bench.original:BatchNorm", "--kwarg", "num_dims=4"]
    argv = [*target, "--kind", "batch2d", "--html"]
    assert main([*argv, str(report)]) == 1  # the course's original fails some checks
    _assert_reads_well(report, tmp_path / "shots")
