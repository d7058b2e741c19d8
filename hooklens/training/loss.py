"""Moved to hooklens.core.chunked_kl."""

from hooklens._compat import moved

moved(__name__, "hooklens.core.chunked_kl")
