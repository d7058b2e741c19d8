"""hooklens: logit and tuned lenses over TransformerLens activation caches."""

from hooklens.artifacts import LensNotFoundError
from hooklens.errors import (
    DataError,
    HooklensError,
    InputError,
    InputTypeError,
    LayerIndexError,
    LensChangedError,
    LensFileError,
    LensMismatchError,
    MissingFileError,
    MissingHookError,
    ModelClassUnavailableError,
    NonFiniteActivationError,
    OutputExistsError,
    RunStateError,
    UnknownModelError,
)
from hooklens.inversion import InversionOutput
from hooklens.lenses import (
    JacobianLens,
    Lens,
    LogitLens,
    TunedLens,
    TunedLensConfig,
    transformer_lens_translator,
)
from hooklens.model import ModelAdapter, ModelFingerprint, WeightProcessing
from hooklens.plotting import TokenFormatter
from hooklens.residuals import get_residual, iter_residuals, residual_stack
from hooklens.stats import LogitStats, js_distance
from hooklens.trajectory import (
    PredictionTrajectory,
    TrajectoryLabels,
    TrajectoryStatistic,
    next_token_targets,
)
from hooklens.unembed import Unembed

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "HooklensError",
    "InputError",
    "InputTypeError",
    "InversionOutput",
    "JacobianLens",
    "LayerIndexError",
    "Lens",
    "LensChangedError",
    "LensFileError",
    "LensMismatchError",
    "LensNotFoundError",
    "LogitLens",
    "LogitStats",
    "MissingFileError",
    "MissingHookError",
    "ModelAdapter",
    "ModelClassUnavailableError",
    "ModelFingerprint",
    "NonFiniteActivationError",
    "OutputExistsError",
    "PredictionTrajectory",
    "RunStateError",
    "TokenFormatter",
    "TrajectoryLabels",
    "TrajectoryStatistic",
    "TunedLens",
    "TunedLensConfig",
    "Unembed",
    "UnknownModelError",
    "WeightProcessing",
    "get_residual",
    "iter_residuals",
    "js_distance",
    "next_token_targets",
    "residual_stack",
    "transformer_lens_translator",
]
