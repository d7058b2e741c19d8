"""Moved to hooklens.evaluation.per_layer."""

from hooklens._compat import moved

moved(__name__, "hooklens.evaluation.per_layer")
