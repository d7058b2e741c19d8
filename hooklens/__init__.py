"""hooklens: logit and tuned lenses over TransformerLens activation caches."""

from hooklens.errors import (
    HooklensError,
    LensMismatchError,
    MissingHookError,
    NonFiniteActivationError,
)
from hooklens.lenses import Lens, LogitLens, TunedLens, TunedLensConfig
from hooklens.model import ModelAdapter, ModelFingerprint, WeightProcessing
from hooklens.residuals import get_residual, iter_residuals, residual_stack
from hooklens.unembed import Unembed

__version__ = "0.1.0"

__all__ = [
    "HooklensError",
    "Lens",
    "LensMismatchError",
    "LogitLens",
    "MissingHookError",
    "ModelAdapter",
    "ModelFingerprint",
    "NonFiniteActivationError",
    "TunedLens",
    "TunedLensConfig",
    "Unembed",
    "WeightProcessing",
    "get_residual",
    "iter_residuals",
    "residual_stack",
]
