"""Proving normalization layers right: tolerances from the arithmetic, the parity grid
behind ``normlab check``, and :func:`audit` (``normlab audit``), which grades anyone's
layer against its ``torch.nn`` twin (:mod:`normlab.testing.auditing`)."""

from normlab.testing.auditing import AuditResult, audit

__all__ = ["AuditResult", "audit"]
