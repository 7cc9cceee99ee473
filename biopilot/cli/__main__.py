"""`python -m biopilot.cli`, the same as the `biopilot` command."""

import sys

from biopilot.cli import main

sys.exit(main())
