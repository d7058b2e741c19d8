"""Where the notebook tests leave one line per executed notebook for the terminal summary.

Its own module so that conftest.py and the tests share one key, however pytest imports
conftest.
"""

from __future__ import annotations

import pytest

NOTEBOOK_REPORT = pytest.StashKey[list[str]]()
