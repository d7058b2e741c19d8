"""Moved to hooklens.core.unembed."""

from hooklens._compat import moved

moved(__name__, "hooklens.core.unembed")
