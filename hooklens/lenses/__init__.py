"""Lenses: maps from a layer's hidden state to the model's vocabulary.

- base: `Lens`, the interface (`transform_hidden`, `forward`, `log_probs`,
  `iter_log_probs`, `generate`) and the input checks every lens shares.
- logit: `LogitLens`, every layer read with the model's own final norm and unembedding.
- tuned: `TunedLens` and `TunedLensConfig`, one learned affine translator per layer,
  saved and loaded through `hooklens.artifacts` (published lenses are named after
  `hooklens.models.hub_model_name`).
- jacobian: `JacobianLens`, each layer moved into the last block's basis by its average
  Jacobian; `.pt` and directory files through `hooklens.artifacts`.
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
