"""Input checks shared by the unembedding and the lenses."""

from __future__ import annotations

import torch
from torch import Tensor

from hooklens.errors import LensMismatchError, NonFiniteActivationError


def validate_hidden(h: Tensor, d_model: int, what: str = "hidden state") -> None:
    """Raise a clear error for a hidden state a lens cannot read.

    NaN or infinite activations *raise* `NonFiniteActivationError` rather than warn:
    every statistic of a lens readout of them would be NaN, silently.
    """
    if not isinstance(h, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(h).__name__}")
    if h.ndim == 0 or h.shape[-1] != d_model:
        raise LensMismatchError(
            f"{what} has shape {tuple(h.shape)}, but this lens expects d_model={d_model} "
            "in the last axis; was it made for another model?"
        )
    if h.numel() == 0:
        raise ValueError(
            f"{what} has shape {tuple(h.shape)}: it holds no positions. Pass at least one token."
        )
    if not h.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {h.dtype}")
    if not bool(torch.isfinite(h).all()):
        bad = (~torch.isfinite(h)).sum().item()
        raise NonFiniteActivationError(
            f"{what} holds {bad} NaN or infinite value(s) out of {h.numel()}; "
            "check the model's dtype (float16 overflows) or the hooks that produced it"
        )
