"""``python -m normlab`` (and ``torchrun -m normlab``) run the command line."""

import sys

from normlab.cli import main

sys.exit(main())
