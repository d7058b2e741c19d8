"""Moved to hooklens.lenses._generate."""

from hooklens._compat import moved

moved(__name__, "hooklens.lenses._generate")
