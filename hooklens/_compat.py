"""Old import paths that moved: each old module is a two-line shim that calls `moved`.

The shim makes the old path *be* the new module (``sys.modules`` points both names at one
object), so ``from hooklens.hub import load_artifacts`` and a test's
``monkeypatch.setattr("hooklens.hub.x", ...)`` keep working, and warns once with the path
to import instead. The library itself never imports a shim (the import-linter contract in
``pyproject.toml`` forbids it).
"""

from __future__ import annotations

import importlib
import sys
import warnings


def moved(old: str, new: str) -> None:
    """Make the module being imported as `old` the module `new`, with a DeprecationWarning.

    Call it as the whole body of the old module: ``moved(__name__, "hooklens.core.unembed")``.
    """
    module = importlib.import_module(new)
    warnings.warn(
        f"{old} moved to {new}; import it from there (the old path will be removed)",
        DeprecationWarning,
        stacklevel=3,
    )
    sys.modules[old] = module
