"""A drawing kit over arrays and strings, like circuitsvis: it imports no hooklens
object type (result objects such as `TrajectoryStatistic` call it, not the other way
round). Modules:

- `tokens`: `TokenFormatter`, token ids → short, visible strings for labels.
- `widgets`: circuitsvis views that work offline (`Widget`), built from token and
  value arrays (`colored_tokens_by_layer`, `token_log_probs_view`).
- `statistic`: deprecated path; `TrajectoryStatistic` and `TrajectoryLabels` moved to
  `hooklens.trajectory.statistic` (import them from `hooklens` or `hooklens.trajectory`).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from hooklens.plotting.tokens import TokenFormatter
from hooklens.plotting.widgets import Widget

__all__ = ["TokenFormatter", "Widget"]

_MOVED = {"TrajectoryLabels", "TrajectoryStatistic"}


def __getattr__(name: str) -> Any:
    """`TrajectoryLabels`/`TrajectoryStatistic` from their new home, with a warning: the
    drawing kit does not import the result types that use it."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"hooklens.plotting.{name} moved to hooklens.trajectory.statistic; import it from "
        "hooklens or hooklens.trajectory (the old path will be removed)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module("hooklens.trajectory.statistic"), name)
