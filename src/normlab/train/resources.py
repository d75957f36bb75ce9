"""Peak memory of this process: read it, and start a new peak.

On Linux the kernel keeps the peak resident set size (``VmHWM`` in
``/proc/self/status``) and resets it when ``5`` is written to ``/proc/self/clear_refs``,
so each phase of a job (one training run) can report its own peak. Elsewhere the peak
comes from ``getrusage`` and cannot be reset.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_rss_bytes() -> int:
    """The largest resident set size this process has had since the last reset, in bytes."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB on Linux


def reset_peak_rss() -> bool:
    """Start a new peak at the current resident size. False where the OS cannot do it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True
