"""The report card of an audit, for the terminal and as a self-contained HTML page.

Both show one row per check: its number, name, result (passed, FAILED, not applicable,
or "failed, not required" for ``torch.compile`` / ``vmap`` where the twin cannot either)
and the measurement. The terminal lists each failure's pitfall under the table; the HTML
page has it in a column. JSON is :meth:`AuditResult.to_json`.
"""

from __future__ import annotations

from normlab.report import Report, format_table
from normlab.testing.auditing.result import AuditResult, CheckResult, Status

__all__ = ["format_card", "result_text", "to_report"]


def result_text(check: CheckResult) -> str:
    """``passed``, ``FAILED``, ``not applicable`` or ``failed, not required``."""
    if check.status is Status.FAILED:
        return "FAILED" if check.required else "failed, not required"
    return check.status.value


def _heading(result: AuditResult) -> str:
    return f"{result.target} ({result.kind}) against torch.nn.{result.twin}"


def _verdict(result: AuditResult) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    return f"{result.summary} in {result.seconds:.1f} s: {verdict}"


def format_card(result: AuditResult) -> str:
    """The card as terminal text: a title line, the table, the pitfalls, the verdict."""
    rows = [
        {"#": i, "check": c.name, "result": result_text(c), "measured": c.measured}
        for i, c in enumerate(result.checks, start=1)
    ]
    lines = [format_table(rows, title=f"normlab audit: {_heading(result)}")]
    failures = [(i, c) for i, c in enumerate(result.checks, start=1) if c.failed]
    if failures:
        lines.append("")
        lines.extend(f"{i}. {c.name}: {c.pitfall}" for i, c in failures)
    lines.append("")
    lines.append(_verdict(result))
    return "\n".join(lines)


def to_report(result: AuditResult) -> Report:
    """The card as a :class:`~normlab.report.Report` (``.write_html(path)``)."""
    report = Report(f"normlab audit: {result.target}", subtitle=_heading(result))
    report.paragraph(
        "Each check compares the layer with its torch.nn twin (in float64 unless the check "
        "is about another dtype); tolerances come from the rounding error of the "
        "arithmetic. A failed check names the pitfall behind it and its fix."
    )
    report.section("Report card")
    rows = [
        {
            "#": i,
            "check": c.name,
            "result": result_text(c),
            "measured": c.measured,
            "pitfall and fix": c.pitfall or None,
        }
        for i, c in enumerate(result.checks, start=1)
    ]
    report.table(rows, caption=_verdict(result))
    return report
