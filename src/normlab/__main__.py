"""``python -m normlab`` (and ``torchrun -m normlab``) run the command line."""

import sys

from normlab.cli.main import main

sys.exit(main())
