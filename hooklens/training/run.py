"""Moved to hooklens.cli.train."""

from hooklens._compat import moved

moved(__name__, "hooklens.cli.train")
