"""``python -m normlab.kernels.cpu [--force]``: build the CPU kernels (:mod:`.build`)."""

import sys

from normlab.kernels.cpu.build import main

sys.exit(main())
