"""Moved to hooklens.core.distributed."""

from hooklens._compat import moved

moved(__name__, "hooklens.core.distributed")
