"""Moved to hooklens.trajectory.statistic."""

from hooklens._compat import moved

moved(__name__, "hooklens.trajectory.statistic")
