"""``python -m normlab.kernels.cpu [--force | --cache]``: build the CPU kernels beside their
sources (make), or into the per-user cache an installed normlab loads from (:mod:`.build`)."""

import sys

from normlab.kernels.cpu.build import main

sys.exit(main())
