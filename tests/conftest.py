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
