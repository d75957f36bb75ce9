"""Grade anyone's normalization layer against its ``torch.nn`` twin.

:func:`audit` runs each check of :data:`CHECKS` (forward and gradients in both modes,
running statistics, modes under grad and no-grad, ``state_dict``, ``.to()``, memory,
low precision, constant channels, bad input, ``torch.compile``, ``vmap``) and returns an
:class:`AuditResult`: a report card with one row per check, its measured number and,
for a failure, the pitfall behind it. ``normlab audit`` prints it.
"""

from normlab.testing.auditing.checks import CHECKS, Check
from normlab.testing.auditing.kinds import KINDS, Kind
from normlab.testing.auditing.result import AuditResult, CheckResult, Status
from normlab.testing.auditing.runner import audit

__all__ = ["CHECKS", "KINDS", "AuditResult", "Check", "CheckResult", "Kind", "Status", "audit"]
