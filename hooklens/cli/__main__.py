"""`python -m hooklens.cli` runs the command line (as `python -m hooklens` does)."""

import sys

from hooklens.cli import main

if __name__ == "__main__":
    sys.exit(main())
