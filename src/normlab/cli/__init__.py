"""The ``normlab`` command line: :mod:`normlab.cli.main` parses and dispatches; every other
public module here is one subcommand (``add_parser`` and ``run``)."""

from normlab.cli.main import main

__all__ = ["main"]
