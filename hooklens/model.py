"""Moved to hooklens.core.adapter."""

from hooklens._compat import moved

moved(__name__, "hooklens.core.adapter")
