"""Suite-wide settings.

The tests run tiny tensors on a 2-core machine: torch's intra-op threads only add
overhead there, and on a busy machine two OpenMP threads waiting for each other make
tests several times slower. One thread for the whole suite (the CLI's default too).
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # after OMP_NUM_THREADS is set

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(params=["kernels", "tensors"])
def code_path(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Run a test once with normlab's compiled CPU kernels and once with its pure-tensor
    code (:mod:`normlab.kernels`); ``make`` builds the kernels, so they must be there."""
    from normlab import kernels

    if request.param == "kernels":
        assert kernels.ops() is not None, (
            "kernels not built: run make (or python -m normlab.kernels.build)"
        )
    kernels.set_enabled(request.param == "kernels")
    yield request.param
    kernels.set_enabled(True)
