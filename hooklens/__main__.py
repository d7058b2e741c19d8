"""`python -m hooklens` runs the command line."""

import sys

from hooklens.cli import main

sys.exit(main())
