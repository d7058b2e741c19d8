"""Moved to hooklens._checks."""

from hooklens._compat import moved

moved(__name__, "hooklens._checks")
