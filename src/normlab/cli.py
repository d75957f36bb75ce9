"""The ``normlab`` command line: a thin dispatcher over ``normlab.commands``.

Every module in :mod:`normlab.commands` is a subcommand. It defines
``add_parser(subparsers) -> argparse.ArgumentParser`` (which sets ``func`` with
``set_defaults``) and a ``run(args) -> int``. Command modules import heavy libraries
(torch, matplotlib) inside ``run`` so that ``normlab --help`` stays instant.

Errors a user can fix (``ValueError``, ``TypeError``, ``OSError``) print one line on
stderr and exit with code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from normlab import __version__, commands


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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("normlab: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"normlab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
