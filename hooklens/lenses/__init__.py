"""Lenses: maps from a layer's hidden state to the model's vocabulary."""

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
