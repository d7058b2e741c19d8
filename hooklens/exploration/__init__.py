"""Exploring trajectories interactively: type a prompt, pick a lens and a statistic.

Its modules, one sentence each:

- session: `ExploreSession`, the state every front-end shares: one model run per text,
  one lens pass per (text, lens), and `View`s (statistic, positions, pinned tokens) read
  off that cache without another pass.
- notebook: `explore`, the notebook explorer (ipywidgets controls around the session),
  with a static figure and a one-line install hint where ipywidgets is missing.
"""

from hooklens.exploration.notebook import Explorer, explore
from hooklens.exploration.session import PAIRED, SINGLE, ExploreSession, View, pin

__all__ = ["PAIRED", "SINGLE", "ExploreSession", "Explorer", "View", "explore", "pin"]
