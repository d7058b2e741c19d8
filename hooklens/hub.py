"""Moved: the tuned-lens catalogue to hooklens.artifacts.hub, TransformerLens's J-lens
registry to hooklens.artifacts.jlens_registry (both re-exported by hooklens.artifacts),
and hub_model_name to hooklens.models.

Importing this module warns (DeprecationWarning) and gives the names it had.
"""

import warnings

from hooklens.artifacts.hub import (
    DEFAULT_REPO_ID,
    DEFAULT_REPO_TYPE,
    LENS_SUBFOLDER,
    available_lens_artifacts,
    lens_repository,
    load_artifacts,
)
from hooklens.artifacts.jlens_registry import (
    JACOBIAN_LENS_REGISTRY_FILE,
    JACOBIAN_LENS_REGISTRY_PACKAGE,
    HubFile,
    JacobianLensEntry,
    download_hub_file,
    jacobian_lens_file,
    jacobian_lens_names,
    jacobian_lens_registry,
    resolve_jacobian_lens,
)
from hooklens.errors import HubUnreachableError, LensNotFoundError
from hooklens.models import hub_model_name

__all__ = [
    "DEFAULT_REPO_ID",
    "DEFAULT_REPO_TYPE",
    "JACOBIAN_LENS_REGISTRY_FILE",
    "JACOBIAN_LENS_REGISTRY_PACKAGE",
    "LENS_SUBFOLDER",
    "HubFile",
    "HubUnreachableError",
    "JacobianLensEntry",
    "LensNotFoundError",
    "available_lens_artifacts",
    "download_hub_file",
    "hub_model_name",
    "jacobian_lens_file",
    "jacobian_lens_names",
    "jacobian_lens_registry",
    "lens_repository",
    "load_artifacts",
    "resolve_jacobian_lens",
]

warnings.warn(
    "hooklens.hub moved: import its names from hooklens.artifacts (hub_model_name from "
    "hooklens.models); the old path will be removed",
    DeprecationWarning,
    stacklevel=2,
)
