"""The report card: one :class:`CheckResult` per check, gathered in an :class:`AuditResult`."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["AuditResult", "CheckResult", "Status"]


class Status(enum.Enum):
    """How a check ended."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_APPLICABLE = "not applicable"


@dataclass(frozen=True)
class CheckResult:
    """One row of the report card.

    Args:
        name: what was checked, e.g. ``"running variance is unbiased"``.
        status: passed, failed or not applicable.
        measured: the measurement in words and numbers, e.g. ``"max|layer - twin| 2e-16
            (tolerance 4e-13)"``, or why the check does not apply.
        value: the measured number (``None`` where there is none).
        tolerance: the largest value that passes (``None`` where the check is a count).
        required: whether a failure makes the audit fail (``torch.compile`` and ``vmap``
            are required only where the twin itself manages them).
        pitfall: for a failure, the pitfall behind it and its fix, in one sentence.
    """

    name: str
    status: Status
    measured: str
    value: float | None = None
    tolerance: float | None = None
    required: bool = True
    pitfall: str = ""

    @property
    def failed(self) -> bool:
        return self.status is Status.FAILED

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready values (``status`` as its text)."""
        return {
            "name": self.name,
            "status": self.status.value,
            "required": self.required,
            "value": self.value,
            "tolerance": self.tolerance,
            "measured": self.measured,
            "pitfall": self.pitfall if self.failed else "",
        }


@dataclass(frozen=True)
class AuditResult:
    """The report card of one layer.

    Args:
        target: what was audited, e.g. ``"student.py:BatchNorm"``.
        kind: the kind's name, e.g. ``"batch2d"``.
        twin: the twin as built, e.g. ``"BatchNorm2d(4)"``.
        checks: one result per check, in the order they ran.
        seconds: how long the audit took.
    """

    target: str
    kind: str
    twin: str
    checks: tuple[CheckResult, ...]
    seconds: float

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The required checks that failed."""
        return tuple(c for c in self.checks if c.failed and c.required)

    @property
    def passed(self) -> bool:
        """Whether every required check passed (or does not apply)."""
        return not self.failures

    def count(self, status: Status) -> int:
        return sum(c.status is status for c in self.checks)

    @property
    def summary(self) -> str:
        """``"17 passed, 2 failed, 3 not applicable"``."""
        return ", ".join(f"{self.count(s)} {s.value}" for s in Status)

    def failure_message(self) -> str:
        """The failing rows, one paragraph each: name, measurement, pitfall and fix."""
        lines = [f"{self.target} ({self.kind}, against torch.nn.{self.twin}): {self.summary}"]
        for check in self.failures:
            lines.append(f"- {check.name}: {check.measured}")
            lines.append(f"    {check.pitfall}")
        return "\n".join(lines)

    def assert_passes(self) -> None:
        """Raise ``AssertionError`` listing the failed checks, each with its pitfall.

        Example:
            >>> from torch import nn
            >>> from normlab.testing import audit
            >>> audit(nn.LayerNorm, "layer").assert_passes()
        """
        __tracebackhide__ = True  # pytest shows the message, not this frame
        if self.failures:
            raise AssertionError(self.failure_message())

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "kind": self.kind,
            "twin": self.twin,
            "passed": self.passed,
            "summary": self.summary,
            "seconds": round(self.seconds, 3),
            "checks": [c.as_dict() for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)
