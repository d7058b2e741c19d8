"""Moved to hooklens.core.residuals."""

from hooklens._compat import moved

moved(__name__, "hooklens.core.residuals")
