"""Collection rules for the whole repository: tests/ and the docstring examples in hooklens/.

An old import path that moved is a shim (`hooklens._compat.moved`): importing it warns and
hands back the new module, so collecting its doctests would run the new module's examples a
second time. Shims are skipped; their targets are collected under their own paths.
"""

from pathlib import Path

_PACKAGE = Path(__file__).parent / "hooklens"

collect_ignore = [
    str(path)
    for path in _PACKAGE.rglob("*.py")
    if "moved(__name__," in path.read_text(encoding="utf-8")
]
