"""Exploring trajectories interactively: type a prompt, pick a lens and a statistic.

Its modules, one sentence each:

- session: `ExploreSession`, the state both front-ends share: one model run per text,
  one lens pass per (text, lens), and `View`s (statistic, positions, pinned tokens) read
  off that cache without another pass.
"""

from hooklens.explore.session import PAIRED, SINGLE, ExploreSession, View, pin

__all__ = ["PAIRED", "SINGLE", "ExploreSession", "View", "pin"]
