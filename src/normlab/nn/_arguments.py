"""Constructor argument checks shared by the layers ``torch.nn`` lacks."""

from __future__ import annotations

from typing import Any


def check_num_features(num_features: Any) -> None:
    """``num_features`` must be a positive ``int``: a layer over no channels is a mistake.

    Raises:
        ValueError: ``num_features`` is not an ``int`` (a ``bool`` is not one) or is below 1.
    """
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
