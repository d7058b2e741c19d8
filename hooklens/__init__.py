"""hooklens: logit, tuned and Jacobian lenses over TransformerLens activation caches.

The map of the package, one line per part, bottom to top in the order data flows. A module
imports only from parts below its own or from its own package (the import contracts in
`pyproject.toml`, run by `make lint`); each package's `__init__` lists its modules.

- `errors`: every exception and warning hooklens raises, each also the built-in to catch.
- `_checks` (internal): argument checks shared by every layer (indices, token ids, devices).
- `stats`: statistics of next-token distributions as tensor functions; the streaming kernel.
- `plotting`: a drawing kit over arrays and strings (heatmap cells, tokens, widgets).
- `core`: the model as a lens sees it (adapter, fingerprint, residual rows, unembedding).
- `artifacts`: lens files and where they live (formats, safe writes, locks, the hub).
- `models`: the embedded SmolLM2-135M and how model names resolve.
- `lenses`: `Lens` and its kinds (logit, tuned, Jacobian), and which lens a file holds.
- `trajectory`: `PredictionTrajectory`, every layer's prediction and its statistics.
- `training`: text to packed chunks, the closed-form fit and the KL fine-tune.
- `causal`: what changes the model's run (ablation, patching, causal bases, faithfulness).
- `evaluation`: per-layer numbers of every lens on held-out text.
- `report`: the self-contained HTML report of one text.
- `exploration`: `hooklens.explore`, the notebook explorer, and the state it shares.
- `cli`: the `hooklens` command line; nothing imports it.

Old module paths that moved (`hooklens.hub`, `hooklens.unembed`, ...) still import, with a
DeprecationWarning naming the new path (`hooklens._compat`).
"""

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
    UnsupportedModelError,
)
from hooklens.exploration import explore
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
    "UnsupportedModelError",
    "WeightProcessing",
    "explore",
    "get_residual",
    "iter_residuals",
    "js_distance",
    "next_token_targets",
    "residual_stack",
    "transformer_lens_translator",
]
