"""Moved to hooklens.trajectory.rows."""

from hooklens._compat import moved

moved(__name__, "hooklens.trajectory.rows")
