"""Moved to hooklens.evaluation.held_out."""

from hooklens._compat import moved

moved(__name__, "hooklens.evaluation.held_out")
