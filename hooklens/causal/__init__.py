"""Everything that changes the model's run: ablation and patching hooks, clean-vs-corrupted
comparisons, the patching sweep, prompt tasks, and causal experiments on lenses.

Above the lenses and trajectories (it reads both). The modules, one job each:

- interventions: hooks that ablate, replace or patch an activation (`zero_ablation`,
  `mean_ablation`, `resample_ablation`, `replace_with`, `patch`).
- effects: a clean and an intervened run compared per layer (`compare`,
  `TrajectoryComparison`), answer log-prob differences, `LayerEffect` with bootstrap
  confidence bands, and `set_log_prob` (the log-probability of a set of tokens).
- patching: `patching_sweep`, the clean residual patched into the corrupted run at each
  layer and position, read by a lens at every layer.
- patchscope: Patchscopes, a state read by patching it into a target prompt's run
  (`patchscope`, `patchscope_log_probs`, `patchscope_generate`, `target_prompt`,
  `token_identity_prompt`, `description_prompt`).
- state_map: `fit_state_map`, an affine map from one model's states to another's, fitted
  by least squares on the same tokens (a Patchscope's `mapping` across models).
- tasks: prompt sets with answers (`greater_than`).
- derangement: permutations that move every row, for resample ablation.
- _projection: internal; `CausalBasis`, `remove_subspace` and the projection arithmetic
  the next module builds on.
- subspaces: removing a subspace as a hook (`subspace_ablation`, `ablate_subspace`) and
  the causal-basis extraction (`extract_causal_bases`).
- faithfulness: does a lens depend on the directions the model depends on
  (`lens_faithfulness`, `direction_effects`).
- faithfulness_result: its result types, rank correlation, table and figure.

    >>> from hooklens.causal import zero_ablation, compare, patching_sweep
"""

from hooklens.causal.derangement import derange, sample_derangement
from hooklens.causal.effects import (
    LayerEffect,
    TrajectoryComparison,
    answer_log_prob_diff,
    bootstrap_ci,
    compare,
)
from hooklens.causal.faithfulness import (
    FaithfulnessResult,
    LayerFaithfulness,
    direction_effects,
    faithfulness_figure,
    faithfulness_table,
    lens_faithfulness,
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
from hooklens.causal.patchscope import (
    TargetPrompt,
    description_prompt,
    patchscope,
    patchscope_generate,
    patchscope_log_probs,
    target_prompt,
    token_identity_prompt,
)
from hooklens.causal.state_map import AffineStateMap, fit_state_map
from hooklens.causal.subspaces import (
    CausalBasis,
    ablate_subspace,
    extract_causal_bases,
    remove_subspace,
    residual_hook_name,
    subspace_ablation,
)
from hooklens.causal.tasks import Task, greater_than

__all__ = [
    "AffineStateMap",
    "CausalBasis",
    "FaithfulnessResult",
    "Hook",
    "LayerEffect",
    "LayerFaithfulness",
    "PatchingSweep",
    "Positions",
    "TargetPrompt",
    "Task",
    "TrajectoryComparison",
    "ablate_subspace",
    "answer_log_prob_diff",
    "bootstrap_ci",
    "compare",
    "derange",
    "description_prompt",
    "direction_effects",
    "extract_causal_bases",
    "faithfulness_figure",
    "faithfulness_table",
    "fit_state_map",
    "greater_than",
    "lens_faithfulness",
    "mean_ablation",
    "patch",
    "patching_sweep",
    "patchscope",
    "patchscope_generate",
    "patchscope_log_probs",
    "remove_subspace",
    "replace_with",
    "resample_ablation",
    "residual_hook_name",
    "sample_derangement",
    "subspace_ablation",
    "target_prompt",
    "token_identity_prompt",
    "zero_ablation",
]
