"""Prediction trajectories: what a lens predicts at every layer and position of some
input, and every statistic of it, computed in one streaming pass. Modules, in the
order data flows through them:

- `inputs`: the tokens — `input_ids`, targets, `attention_mask` coerced and checked,
  `next_token_targets`, and padding (inferred, read, and the targets-into-padding
  rule): the one place for padding.
- `build`: what the constructors read before streaming — a cache's residuals (checked
  against the model's logits) or one run of the model with only the lens's hooks.
- `rows`: where rows of logits come from (`LensSource`, `LogProbSource`) and
  `MaskedRows`, the one place `mask_input` and the output-row rule live.
- `readout`: the one streaming pass (`read`) and the pair pass (`read_pair`), their
  results stacked from the kernel's dataclasses field by field.
- `layout`: flat rows ↔ `[..., pos]`, the one place batch axes are restored (einops).
- `statistics`: the table of statistics (name, units, bounds, needs, how to read it
  off the readout) and the public method of each.
- `labels`: token labels and hover tables of figures, as in tuned-lens.
- `statistic`: `TrajectoryStatistic`/`TrajectoryLabels`, a `[..., layer, pos]` result
  and how to draw it.
- `state`: internal; what every trajectory holds and the steps its methods share.
- `prediction`: `PredictionTrajectory`, the facade users build and read.
"""

from hooklens.trajectory.inputs import (
    UNITS,
    Units,
    checked_attention_mask,
    infer_padding,
    model_padding,
    next_token_targets,
)
from hooklens.trajectory.labels import (
    DEFAULT_TOPK,
    LABEL_TOPK,
    MAX_ENTRIES_TO_SHOW,
    MIN_PROB_DELTA,
)
from hooklens.trajectory.prediction import PredictionTrajectory
from hooklens.trajectory.readout import ROW_BLOCK, VOCAB_CHUNK
from hooklens.trajectory.statistic import TrajectoryLabels, TrajectoryStatistic

__all__ = [
    "DEFAULT_TOPK",
    "LABEL_TOPK",
    "MAX_ENTRIES_TO_SHOW",
    "MIN_PROB_DELTA",
    "ROW_BLOCK",
    "UNITS",
    "VOCAB_CHUNK",
    "PredictionTrajectory",
    "TrajectoryLabels",
    "TrajectoryStatistic",
    "Units",
    "checked_attention_mask",
    "infer_padding",
    "model_padding",
    "next_token_targets",
]
