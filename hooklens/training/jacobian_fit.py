"""Moved to hooklens.lenses._jacobian_estimator."""

from hooklens._compat import moved

moved(__name__, "hooklens.lenses._jacobian_estimator")
