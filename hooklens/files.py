"""Moved to hooklens.artifacts (atomic writes: .atomic; output locks: .locks)."""

from typing import TYPE_CHECKING

from hooklens._compat import moved

if TYPE_CHECKING:  # what the old path gives, for type checkers (moved is opaque to them)
    from hooklens.artifacts import *  # noqa: F403

moved(__name__, "hooklens.artifacts")
