"""Lenses: maps from a layer's hidden state to the model's vocabulary."""

from hooklens.lenses.base import Lens
from hooklens.lenses.jacobian import JacobianLens
from hooklens.lenses.logit import LogitLens
from hooklens.lenses.tuned import TunedLens, TunedLensConfig

__all__ = ["JacobianLens", "Lens", "LogitLens", "TunedLens", "TunedLensConfig"]
