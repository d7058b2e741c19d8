"""Moved to hooklens.stats.streaming."""

from hooklens._compat import moved

moved(__name__, "hooklens.stats.streaming")
