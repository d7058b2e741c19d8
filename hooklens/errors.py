"""Exceptions that say what was expected, what was found, and what to do.

Every error hooklens raises on purpose is a `HooklensError`, and also the built-in
exception a caller would otherwise catch (`ValueError`, `TypeError`, ...), so existing
`except ValueError` code keeps working. The command line prints any `HooklensError` as
one line and exits 2.

Every exception and warning class of hooklens is defined here, and only here (a test
parses the package to keep it so); modules that raised them first re-export them.
`warn` issues every warning, pointing at the caller's line.
"""

from __future__ import annotations

import sys
import warnings
from types import FrameType

# Frames `warn` looks through to find the caller: ours, and the wrappers that sit
# between a caller and our functions (jaxtyping's and beartype's runtime checks in the
# test suite, torch's no_grad/inference_mode decorators, contextlib).
_TRANSPARENT = ("hooklens", "jaxtyping", "beartype", "torch.utils._contextlib", "contextlib")


def warn(message: str | Warning, category: type[Warning] = UserWarning) -> None:
    """`warnings.warn` attributed to the first frame outside hooklens: the user's line,
    however deep in the library the warning arose (what Python 3.12's
    `skip_file_prefixes` does; a fixed `stacklevel` breaks whenever a call path changes
    or a decorator wraps a function)."""
    frame: FrameType | None = sys._getframe(1)
    level = 2  # stacklevel 1 is this function
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not any(module == name or module.startswith(name + ".") for name in _TRANSPARENT):
            break
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class HooklensError(Exception):
    """Base class of every error hooklens raises on purpose."""


class InputError(HooklensError, ValueError):
    """An argument has the wrong shape or value (empty text, ids out of range, ...)."""


class InputTypeError(HooklensError, TypeError):
    """An argument has the wrong type (a float layer index, a string of token ids, ...)."""


class LayerIndexError(HooklensError, IndexError):
    """A layer index outside the rows a lens or cache has."""


class LensMismatchError(HooklensError, ValueError):
    """A lens does not fit the model, cache or tensor it was given.

    Raised for a lens trained on another model, another unembedding, other weight
    processing, or a hidden state of the wrong width.
    """


class LensChangedError(HooklensError, RuntimeError):
    """A lens was changed in place after a result that depends on it was computed."""


class LensFileError(HooklensError, ValueError):
    """A lens file is truncated, corrupt, incomplete or inconsistent (names file and key)."""


class MissingHookError(HooklensError, KeyError):
    """An `ActivationCache` lacks a hook the lens needs."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable.
        return str(self.args[0]) if self.args else ""


class NonFiniteActivationError(HooklensError, ValueError):
    """A hidden state holds NaN or infinity, so no lens readout of it means anything."""


class ModelClassUnavailableError(HooklensError, ImportError):
    """The model class asked for does not exist in the installed TransformerLens."""


class UnknownModelError(HooklensError, ValueError):
    """A model name that cannot be loaded here: unknown to hooklens, TransformerLens and
    the hub, or a hub model that is not cached while the hub is unreachable."""


class UnsupportedModelError(HooklensError, ValueError):
    """A model hooklens cannot read faithfully: e.g. a family that transforms its logits
    after the unembedding in a way hooklens does not know."""


class DataError(HooklensError, ValueError):
    """Training or evaluation text that cannot be read (format, field, empty, changed)."""


class MissingFileError(HooklensError, FileNotFoundError):
    """A file or directory the call needs is not there (data files, a checkpoint to resume)."""


class OutputExistsError(HooklensError, FileExistsError):
    """Writing would replace something that exists; pass overwrite (or resume) to allow."""


class RunStateError(HooklensError, ValueError):
    """A resume whose checkpoint or settings do not match the run being resumed."""


class OutputLockedError(HooklensError, RuntimeError):
    """An output is owned by another run (its lock names the process); wait or write elsewhere."""


class OutputWriteError(HooklensError, OSError):
    """A file could not be written (full disk, read-only file system, no permission); the
    earlier file is kept. `errno` is the cause's (`errno.ENOSPC`, ...) where it is known."""

    def __str__(self) -> str:  # OSError would show "[Errno 28] None: 'path'"; we want the line
        return str(self.args[0]) if self.args else ""


class LensNotFoundError(HooklensError, FileNotFoundError, ValueError):
    """No lens with that name where we looked; the message lists the ones there are.

    A `FileNotFoundError`, and also a `ValueError`: tuned-lens raised `ValueError` for
    a lens it could not find, so ported `except ValueError` code still catches it.
    """


class HubUnreachableError(HooklensError, ConnectionError):
    """The lens is not in the local cache and the hub cannot be reached."""


class StaleLockWarning(UserWarning):
    """A lock file left by a run that ended without releasing it was taken over."""


class ProcessedWeightsError(LensMismatchError):
    """A lens fitted on raw activations (a Jacobian lens) was given a model whose weights
    TransformerLens processed (fold_ln, center_writing_weights, center_unembed)."""


class FewerTokensWarning(UserWarning):
    """The batches held fewer tokens than the evaluation was asked for."""


class TextCutWarning(UserWarning):
    """A text longer than what is read (`max_tokens`, the model's context) was cut."""


class MissingWidgetsWarning(UserWarning):
    """ipywidgets is not installed: `hooklens.explore` shows a static figure instead."""


class ProvenanceWarning(UserWarning):
    """A lens file was written under another transformers or TransformerLens major.minor
    version than the one installed: the model may compute a little otherwise now."""
