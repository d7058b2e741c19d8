"""pytest at the repository root: the doctest collection of the package skips old module
paths that moved (`hooklens._compat.moved` shims): such a path *is* the module at its new
path, which is collected there, and pytest refuses a module whose file is another."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent / "hooklens"


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if collection_path.suffix != ".py" or PACKAGE not in collection_path.resolve().parents:
        return None
    text = collection_path.read_text(encoding="utf-8")
    return True if "from hooklens._compat import moved\n" in text else None
