"""Moved to hooklens.core.inversion."""

from hooklens._compat import moved

moved(__name__, "hooklens.core.inversion")
