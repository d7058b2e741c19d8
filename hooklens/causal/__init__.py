"""Everything that changes the model's run: ablation and patching hooks, clean-vs-corrupted
comparisons, the patching sweep, prompt tasks, and causal experiments on lenses.

    >>> from hooklens.causal import zero_ablation, compare, patching_sweep
"""

from hooklens.causal.effects import (
    LayerEffect,
    TrajectoryComparison,
    answer_log_prob_diff,
    bootstrap_ci,
    compare,
)
from hooklens.causal.interventions import (
    Hook,
    Positions,
    mean_ablation,
    patch,
    replace_with,
    resample_ablation,
    zero_ablation,
)
from hooklens.causal.patching import PatchingSweep, patching_sweep
from hooklens.causal.tasks import Task, greater_than

__all__ = [
    "Hook",
    "LayerEffect",
    "PatchingSweep",
    "Positions",
    "Task",
    "TrajectoryComparison",
    "answer_log_prob_diff",
    "bootstrap_ci",
    "compare",
    "greater_than",
    "mean_ablation",
    "patch",
    "patching_sweep",
    "replace_with",
    "resample_ablation",
    "zero_ablation",
]
