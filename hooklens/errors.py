"""Exceptions that say what was expected, what was found, and what to do."""

from __future__ import annotations


class HooklensError(Exception):
    """Base class of every error hooklens raises on purpose."""


class LensMismatchError(HooklensError, ValueError):
    """A lens does not fit the model, cache or tensor it was given.

    Raised for a lens trained on another model, another unembedding, other weight
    processing, or a hidden state of the wrong width.
    """


class MissingHookError(HooklensError, KeyError):
    """An `ActivationCache` lacks a hook the lens needs."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable.
        return str(self.args[0]) if self.args else ""


class NonFiniteActivationError(HooklensError, ValueError):
    """A hidden state holds NaN or infinity, so no lens readout of it means anything."""


class ModelClassUnavailableError(HooklensError, ImportError):
    """The model class asked for does not exist in the installed TransformerLens."""
