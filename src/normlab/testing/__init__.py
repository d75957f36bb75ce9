"""Proving normalization layers right: tolerances from the arithmetic and the parity grid
behind ``normlab check``."""
