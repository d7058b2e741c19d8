"""Moved to hooklens.core.precision."""

from hooklens._compat import moved

moved(__name__, "hooklens.core.precision")
