"""Keep freed tensor memory in the process: no page faults for each step's fresh tensors.

On Linux, glibc's ``malloc`` serves large blocks (from 128 KiB, a threshold it raises up to
32 MiB as blocks are freed) with ``mmap`` and gives them back to the kernel with
``munmap`` on ``free``; it also trims free memory at the top of its heap. A training step
allocates its activations and gradients afresh, so every step the kernel hands out new
zero-filled pages again, one page fault per 4 KiB: on LeNet about a sixth of a
one-thread step on this project's 2-core machine.

:func:`retain_freed_memory` raises both thresholds (``mallopt``), so freed blocks of up to
32 MiB stay in the heap and the next step reuses them. The process's memory then stays
at its peak rather than dropping between steps; the peak itself does not grow. Elsewhere
(another C library, another OS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_LARGEST_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems

_applied = False


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed blocks up to 32 MiB for reuse; True if it took effect.

    Idempotent and safe to call anywhere: returns False (changing nothing) off Linux or
    when the C library has no ``mallopt``.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 2 * _LARGEST_MMAP_THRESHOLD) == 1 and ok
    _applied = ok
    return ok
