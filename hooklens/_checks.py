"""Input checks shared by the unembedding, the lenses and the trajectories.

Each check raises a `HooklensError` that says what was expected, what was found and
what to do, instead of letting a raw torch or TransformerLens error (or, worse, a
silently different number) through.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hooklens.errors import (
    InputError,
    InputTypeError,
    LayerIndexError,
    LensMismatchError,
    NonFiniteActivationError,
)


def validate_hidden(h: Tensor, d_model: int, what: str = "hidden state") -> None:
    """Raise a clear error for a hidden state a lens cannot read.

    NaN or infinite activations *raise* `NonFiniteActivationError` rather than warn:
    every statistic of a lens readout of them would be NaN, silently.
    """
    if not isinstance(h, Tensor):
        raise InputTypeError(f"{what} must be a torch.Tensor, got {type(h).__name__}")
    if h.ndim == 0 or h.shape[-1] != d_model:
        raise LensMismatchError(
            f"{what} has shape {tuple(h.shape)}, but this lens expects d_model={d_model} "
            "in the last axis; was it made for another model?"
        )
    if h.numel() == 0:
        raise InputError(
            f"{what} has shape {tuple(h.shape)}: it holds no positions. Pass at least one token."
        )
    if not h.is_floating_point():
        raise InputTypeError(f"{what} must be floating point, got {h.dtype}")
    if not bool(torch.isfinite(h).all()):
        bad = (~torch.isfinite(h)).sum().item()
        raise NonFiniteActivationError(
            f"{what} holds {bad} NaN or infinite value(s) out of {h.numel()}; "
            "check the model's dtype (float16 overflows) or the hooks that produced it"
        )


def layer_index(idx: Any, n_layers: int) -> int:
    """`idx` as a row in `0..n_layers` (negative counts from the end; `n_layers` is the
    final residual). Python ints, numpy integers and 0-d integer tensors are accepted;
    bools and floats are refused rather than read as 1 or truncated."""
    if isinstance(idx, (bool, np.bool_)) or (isinstance(idx, Tensor) and idx.dtype == torch.bool):
        raise InputTypeError(f"layer index must be an int, got the bool {idx!r}")
    try:
        value = operator.index(idx)  # int, np.int64, 0-d integer tensor
    except TypeError:
        raise InputTypeError(
            f"layer index must be an int, got {type(idx).__name__} {idx!r}"
        ) from None
    n_rows = n_layers + 1
    if not -n_rows <= value < n_rows:
        raise LayerIndexError(
            f"layer {value} is out of range: rows are 0..{n_layers} ({n_layers} = the "
            f"final residual after the last block; -1 counts from the end)"
        )
    return value % n_rows


def token_id_tensor(ids: Any, name: str) -> Tensor:
    """`ids` (tensor, numpy array or nested lists of ints) as a CPU int64 tensor.

    Text, ragged lists, floats and bool masks are refused with what to pass instead.
    """
    if isinstance(ids, str) or (
        isinstance(ids, (list, tuple)) and any(isinstance(item, str) for item in ids)
    ):
        raise InputTypeError(
            f"{name} must be token ids, got text {ids!r:.60}: tokenize it first with "
            "model.to_tokens(text), or pass the string to "
            "PredictionTrajectory.from_lens_and_model"
        )
    try:
        tensor = torch.as_tensor(ids)
    except (ValueError, TypeError, RuntimeError) as error:
        raise InputError(
            f"{name} must be a rectangular [..., pos] array of token ids ({error}); pad "
            "sequences of different lengths with model.to_tokens([...]) (which pads) and "
            "pass attention_mask"
        ) from None
    if tensor.dtype == torch.bool:
        raise InputTypeError(
            f"{name} is a bool mask; it must hold token ids (int), with -1 where there is none"
        )
    if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel() > 0:
        raise InputTypeError(f"{name} must hold integer token ids, got {tensor.dtype}")
    return tensor.detach().cpu().long()


def check_id_range(ids: Tensor, name: str, vocab: int, *, allow_missing: bool) -> None:
    """Ids must lie in `0..vocab-1` (and may be -1, "no target", if `allow_missing`)."""
    if ids.numel() == 0:
        return
    low = -1 if allow_missing else 0
    bad = (ids < low) | (ids >= vocab)
    if bool(bad.any()):
        first = ids[bad][0].item()
        where = tuple(int(i) for i in bad.nonzero()[0])
        allowed = f"-1 (no target) or 0..{vocab - 1}" if allow_missing else f"0..{vocab - 1}"
        advice = (
            " Mark padding with the tokenizer's pad token and pass attention_mask, not a "
            "negative id."
            if not allow_missing and first < 0
            else ""
        )
        raise InputError(
            f"{name} holds {int(bad.sum())} id(s) outside {allowed} (e.g. {first} at index "
            f"{where}); the vocabulary has {vocab} tokens.{advice}"
        )


def _int(value: Any, name: str, kind: str) -> int:
    """`value` as an int (an index: no bool, no float), or `InputTypeError` asking for `kind`."""
    if isinstance(value, bool):
        raise InputTypeError(f"{name} must be {kind}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InputTypeError(f"{name} must be {kind}, got {value!r}") from None


def positive_int(value: Any, name: str, *, at_most: int | None = None) -> int:
    """`value` as an int ≥ 1 (and ≤ `at_most`), or a clear error."""
    number = _int(value, name, "a positive int")
    if number < 1 or (at_most is not None and number > at_most):
        bound = f" and at most {at_most}" if at_most is not None else ""
        raise InputError(f"{name} must be at least 1{bound}, got {number}")
    return number


def non_negative_int(value: Any, name: str, *, meaning: str = "") -> int:
    """`value` as an int ≥ 0, or a clear error; `meaning` says what the number counts
    (`"leading positions left out of the mean"`), in the error."""
    number = _int(value, name, "an int ≥ 0")
    if number < 0:
        said = f" ({meaning})" if meaning else ""
        raise InputError(f"{name} must be 0 or more{said}, got {number}")
    return number


def available_device(device: str | torch.device, what: str) -> torch.device:
    """`device` as a `torch.device` this machine can allocate on, or an `InputError`
    that starts with `what` (e.g. `"--device cuda:3"`) and says why.

    A name torch parses but this machine lacks (`cuda` without a GPU, `cuda:7` on a
    machine with two) fails here, before anything loads, not in the middle of a run.
    """
    try:
        checked = torch.device(device)
        torch.empty(0, device=checked)
    except (RuntimeError, AssertionError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unavailable"
        raise InputError(
            f"{what} is not a device this machine has ({reason}); pass 'cpu', or a device "
            "torch can use here"
        ) from None
    return checked


def cut_notice(model: Any, text: str, max_tokens: int, option: str = "max_tokens=") -> str | None:
    """What reading at most `max_tokens` tokens of `text` leaves out (None: nothing), and
    how to read more; `option` spells the setting (`"--max-tokens "` on the command
    line). The model's context length caps what it can read.

    Examples:
        >>> long_text = " ".join(["The cat sat on the mat ."] * 5)
        >>> cut_notice(model, long_text, 16)
        'read the first 16 of 36 tokens; pass max_tokens=36 to read all'
        >>> print(cut_notice(model, long_text * 4, 16))  # the examples' model reads 64
        read the first 16 of 141 tokens; pass max_tokens=64 to read as many as the model's ...
        >>> cut_notice(model, "Hello world", 16) is None
        True
    """
    n_tokens = model.to_tokens(text, truncate=False).shape[-1]
    return tokens_cut_notice(n_tokens, context_length(model, n_tokens), max_tokens, option)


def tokens_cut_notice(
    n_tokens: int, n_ctx: int, max_tokens: int, option: str = "max_tokens="
) -> str | None:
    """`cut_notice` for a text already tokenised to `n_tokens` tokens (no second pass)."""
    n_read = min(max_tokens, n_ctx, n_tokens)
    if n_read == n_tokens:
        return None
    notice = f"read the first {n_read} of {n_tokens} tokens"
    if n_read == n_ctx:
        return f"{notice}, as many as the model's context holds"
    if n_tokens <= n_ctx:
        return f"{notice}; pass {option}{n_tokens} to read all"
    return f"{notice}; pass {option}{n_ctx} to read as many as the model's context holds"


def context_length(model: Any, default: int) -> int:
    """The model's context length (`cfg.n_ctx`), or `default` where it records none."""
    return getattr(getattr(model, "cfg", None), "n_ctx", None) or default
