"""The ``normlab`` command line: a thin dispatcher over the modules of :mod:`normlab.cli`.

Every other module in :mod:`normlab.cli` (not ``main``, not ``_``-prefixed) is a
subcommand. It defines
``add_parser(subparsers) -> argparse.ArgumentParser`` (which sets ``func`` with
``set_defaults``) and a ``run(args) -> int``. Command modules import heavy libraries
(torch, matplotlib) inside ``run`` so that ``normlab --help`` stays instant.

Commands that train set ``trains=True`` in their defaults: for them, torch's CPU allocator
caches freed blocks (:func:`normlab.kernels.cache_cpu_memory`). Errors a user can fix
(``ValueError``, :class:`~normlab.errors.UsageError` among them, and ``OSError``) print one
line on stderr and exit with code 2; any other exception is a bug and keeps its traceback.
Ctrl-C (SIGINT) exits with 130 and SIGTERM with 143, both without a traceback: SIGTERM is
raised as a :class:`Terminated` (a ``KeyboardInterrupt``), so a command's clean-ups run the
same way for both, and a command that can be continued says how on the same line (a note
``to continue: normlab ... --resume DIR`` added to the interrupt). A closed pipe
(``normlab info | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import NoReturn

from normlab import __version__
from normlab.errors import UsageError

DEFAULT_THREADS = 1  # see --threads


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="normlab",
        description="Normalization layers from scratch, proven equal to torch.nn, and a lab.",
    )
    parser.add_argument("--version", action="version", version=f"normlab {__version__}")
    parser.add_argument(
        "--threads",
        dest="global_threads",
        type=int,
        default=None,  # resolved in main: a bad $NORMLAB_THREADS must not break --help
        metavar="N",
        help=f"CPU threads per process (default {DEFAULT_THREADS}, or $NORMLAB_THREADS; 0: "
        "torch's default). LeNet's tensors are small: one thread is as fast as two on an idle "
        "machine and many times faster on a busy one",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules([os.path.dirname(__file__)]), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        module.add_parser(subparsers)
    return parser


def threads_from_env() -> int:
    """``$NORMLAB_THREADS`` as a whole number >= 0, or ``DEFAULT_THREADS`` when unset or empty.

    Raises:
        UsageError: the variable holds anything else (the message names it and the way out).
    """
    value = os.environ.get("NORMLAB_THREADS", "").strip()
    if not value:
        return DEFAULT_THREADS
    if not (value.isascii() and value.isdigit()):  # "1.5", "-1", "abc", "²": not a count
        raise UsageError(
            f"NORMLAB_THREADS must be a whole number >= 0, got {value!r}; unset it or set "
            f"e.g. NORMLAB_THREADS={DEFAULT_THREADS}"
        )
    return int(value)


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in this process and the processes it starts (0: torch's
    default). Set before torch is imported where possible (OpenMP reads the environment)."""
    if threads < 0:
        raise UsageError(f"--threads must be 0 (torch's default) or positive, got {threads}")
    if threads == 0:
        return
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C's ``KeyboardInterrupt`` is."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in this process.

    A child forked meanwhile inherits the handler; there SIGTERM keeps its default action
    (the child ends at once), since only this process runs the clean-ups.
    """
    if threading.current_thread() is not threading.main_thread():  # handlers live there
        yield
        return
    owner = os.getpid()

    def terminate(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(command: str, interrupt: KeyboardInterrupt) -> int:
    """Say that ``command`` was interrupted (and how to continue it); its exit code."""
    terminated = isinstance(interrupt, Terminated)
    what = "terminated" if terminated else "interrupted"
    notes = getattr(interrupt, "__notes__", [])
    print(f"normlab {command}: {'; '.join([what, *notes])}", file=sys.stderr, flush=True)
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        threads = args.global_threads
        set_threads(threads_from_env() if threads is None else threads)
    except UsageError as error:
        parser.error(str(error))
    if getattr(args, "trains", False):
        from normlab import kernels

        kernels.cache_cpu_memory()  # each step's fresh tensors reuse memory: no page faults
    try:
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as interrupt:
        return interrupted(args.command, interrupt)
    except BrokenPipeError:  # the reader went away (normlab ... | head): nothing to report
        # point stdout at /dev/null so that the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as error:  # bad values and unusable files; a TypeError is
        # a bug in normlab (or in code a user handed it) and keeps its traceback
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"normlab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
