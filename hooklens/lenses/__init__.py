"""Lenses: maps from a layer's hidden state to the model's vocabulary.

- base: `Lens`, the interface (`transform_hidden`, `forward`, `log_probs`,
  `iter_log_probs`, `generate`) and the input checks every lens shares.
- logit: `LogitLens`, every layer read with the model's own final norm and unembedding.
- tuned: `TunedLens` and `TunedLensConfig`, one learned affine translator per layer,
  saved and loaded through `hooklens.artifacts` (published lenses are named after
  `hooklens.models.hub_model_name`).
- _translators: internal; `LowRankTranslator`, the `U (Vᵀ h) + b` translator of a
  `TunedLens` with `rank=r`.
- jacobian: `JacobianLens`, each layer moved into the last block's basis by its average
  Jacobian; `fit`, `save` and `load` call the three internal modules below.
- _jacobian_files: internal; what `JacobianLens.save` writes and `JacobianLens.load`
  reads (`.pt` payloads and directories, through `hooklens.artifacts`) and checks
  against the model.
- jacobian_estimator: the exact Jacobian-lens estimator (`fit_jacobians`),
  resumable and data-parallel under torchrun, knowing no lens class.
- _jacobian_fit_checkpoint: internal; the estimator's checkpoint: writing it, reading
  and checking it, and what a resume must repeat.
- _generate: internal; `Lens.generate`, greedy or sampled decoding read through a lens
  at one layer.
- registry: `LENS_TYPES`, one entry per lens type that lives in files; which type a
  file holds (`lens_file_type`) and loading it for a model (`load_lens`).
- interop: `transformer_lens_translator`, our lenses as the `lens=` translator of
  TransformerLens 4's `logit_lens` tool.
"""

from hooklens.lenses.base import Lens
from hooklens.lenses.interop import TransformerLensTranslator, transformer_lens_translator
from hooklens.lenses.jacobian import JacobianLens
from hooklens.lenses.logit import LogitLens
from hooklens.lenses.tuned import TunedLens, TunedLensConfig

__all__ = [
    "JacobianLens",
    "Lens",
    "LogitLens",
    "TransformerLensTranslator",
    "TunedLens",
    "TunedLensConfig",
    "transformer_lens_translator",
]
