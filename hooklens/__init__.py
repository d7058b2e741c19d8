"""hooklens: logit and tuned lenses over TransformerLens activation caches."""

from hooklens.artifacts import LensNotFoundError
from hooklens.core import ModelAdapter, ModelFingerprint, WeightProcessing
from hooklens.core import precision as precision  # `from hooklens import precision`, as taught
from hooklens.core.inversion import InversionOutput
from hooklens.core.residuals import get_residual, iter_residuals, residual_stack
from hooklens.core.unembed import Unembed
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
from hooklens.lenses import (
    JacobianLens,
    Lens,
    LogitLens,
    TunedLens,
    TunedLensConfig,
    transformer_lens_translator,
)
from hooklens.plotting import TokenFormatter
from hooklens.stats import LogitStats, js_distance
from hooklens.trajectory import (
    PredictionTrajectory,
    TrajectoryLabels,
    TrajectoryStatistic,
    next_token_targets,
)

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
