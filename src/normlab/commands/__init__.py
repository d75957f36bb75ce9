"""One module per ``normlab`` subcommand; see :mod:`normlab.cli` for the contract."""
