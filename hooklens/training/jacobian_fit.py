"""Moved to hooklens.lenses.jacobian_estimator."""

from hooklens._compat import moved

moved(__name__, "hooklens.lenses.jacobian_estimator")
