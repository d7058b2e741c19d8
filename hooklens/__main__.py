"""`python -m hooklens` runs the command line."""

import sys

from hooklens.cli import main

if __name__ == "__main__":
    sys.exit(main())
