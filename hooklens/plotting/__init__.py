"""Drawing trajectory statistics: plotly heatmaps, token labels, circuitsvis widgets."""

from hooklens.plotting.statistic import TrajectoryLabels, TrajectoryStatistic
from hooklens.plotting.tokens import TokenFormatter
from hooklens.plotting.widgets import Widget

__all__ = ["TokenFormatter", "TrajectoryLabels", "TrajectoryStatistic", "Widget"]
