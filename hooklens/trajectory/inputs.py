"""A trajectory's tokens: coercion and checks of `input_ids`, targets and
`attention_mask`, `next_token_targets`, and padding — the one place for padding
(inferring it, reading a mask, the targets-into-padding rule, the padding array a
figure's hover reports).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from hooklens._checks import check_id_range, token_id_tensor
from hooklens.core import ModelAdapter
from hooklens.errors import InputError

Units = Literal["nats", "bits"]
UNITS = ("nats", "bits")


def checked_units(units: Any) -> str:
    """`units` if it is `"nats"` or `"bits"`, else a clear error."""
    if units not in UNITS:
        raise InputError(f"units must be 'nats' or 'bits', got {units!r}")
    return units


def as_long(ids: Any, name: str) -> Tensor | None:
    """Token ids as a long tensor (None stays None)."""
    return None if ids is None else token_id_tensor(ids, name)


def input_id_tensor(input_ids: Any) -> Tensor:
    """`input_ids` as a `[..., pos]` long tensor with at least one position."""
    ids = token_id_tensor(input_ids, "input_ids")
    if ids.ndim == 0 or ids.shape[-1] == 0:
        raise InputError(
            f"input_ids must be [..., pos] with pos ≥ 1, got {tuple(ids.shape)}: "
            "pass at least one token"
        )
    return ids


def check_token_ids(
    input_ids: Tensor, targets: Tensor | None, anti_targets: Tensor | None, vocab_size: int
) -> None:
    """Ids inside the vocabulary; targets shaped like `input_ids` (-1 = no target)."""
    check_id_range(input_ids, "input_ids", vocab_size, allow_missing=False)
    for name, value in (("targets", targets), ("anti_targets", anti_targets)):
        if value is None:
            continue
        if value.shape != input_ids.shape:
            raise InputError(
                f"{name} are {tuple(value.shape)}, but input_ids are "
                f"{tuple(input_ids.shape)}: give one {name[:-1].replace('_', '-')} id per "
                "position, -1 where there is none (next_token_targets(input_ids) scores the "
                "next token)"
            )
        check_id_range(value, name, vocab_size, allow_missing=True)


def next_token_targets(
    input_ids: Int[Tensor, "... pos"], attention_mask: Any = None
) -> Int[Tensor, "... pos"]:
    """Each position's next input token as its target; -1 (no target) at the last one
    and, given an `attention_mask`, wherever the next position is padding.

    Examples:
        >>> next_token_targets(torch.tensor([5, 6, 7]))
        tensor([ 6,  7, -1])
        >>> next_token_targets(torch.tensor([5, 6, 0]), attention_mask=torch.tensor([1, 1, 0]))
        tensor([ 6, -1, -1])
    """
    ids = token_id_tensor(input_ids, "input_ids")
    targets = torch.cat([ids[..., 1:], torch.full_like(ids[..., :1], -1)], dim=-1)
    if attention_mask is not None:
        real = attention_mask_tensor(attention_mask, ids.shape)
        next_real = torch.cat([real[..., 1:], torch.zeros_like(real[..., :1])], dim=-1)
        targets = targets.masked_fill(~next_real, -1)
    return targets


def attention_mask_tensor(
    attention_mask: Any,
    shape: tuple[int, ...],
    name: str = "attention_mask",
    ids_name: str = "input_ids",
) -> Tensor:
    """`attention_mask` (1 = real token, 0 = padding) as a bool tensor of `shape`."""
    try:
        mask = torch.as_tensor(attention_mask).detach().cpu()
    except (ValueError, TypeError, RuntimeError):
        raise InputError(f"{name} must be a [..., pos] array of 1s and 0s") from None
    if tuple(mask.shape) != tuple(shape):
        raise InputError(
            f"{name} is {tuple(mask.shape)}, but {ids_name} are {tuple(shape)}: "
            "give one entry per token (1 = real, 0 = padding)"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError(f"{name} must hold 1 (real token) or 0 (padding) only")
    return mask.bool()


def infer_padding(input_ids: Tensor, tokenizer: Any, prepend_bos: bool = False) -> Tensor | None:
    """The attention mask of a batch TransformerLens padded (`model.to_tokens([...])`,
    on either side), or None when nothing in it looks like padding.

    Pads are the tokenizer's pad tokens at one end of a sequence (TransformerLens's own
    `get_attention_mask`, which keeps a BOS that shares the pad id). A batch counts as
    padded on a side only if some sequence has no pad there (the longest, which
    `to_tokens` never pads): a batch whose sequences all end in the pad token (often
    the EOS) keeps every token. The tokenizer's `padding_side` is tried first.
    """
    if tokenizer is None or getattr(tokenizer, "pad_token_id", None) is None:
        return None
    rows = input_ids.reshape(-1, input_ids.shape[-1])
    if rows.shape[0] < 2:
        return None
    from transformer_lens.utilities import get_attention_mask

    first = getattr(tokenizer, "padding_side", "right")
    for side in (first, "left" if first == "right" else "right"):
        mask = get_attention_mask(tokenizer, rows, prepend_bos, padding_side=side).bool()
        padded_rows = ~mask.all(dim=-1)
        if bool(padded_rows.any()) and not bool(padded_rows.all()):
            return mask.reshape(input_ids.shape)
    return None


def model_padding(ids: Tensor, adapter: ModelAdapter, tokenizer: Any = None) -> Tensor | None:
    """The attention mask of the padding `adapter`'s model added to a batch of `ids`
    (`infer_padding` with its tokenizer, or `tokenizer`, and its BOS setting), or None.

    What every reader of a model's token batches assumes when not given a mask.
    """
    if ids.ndim < 2:
        return None
    prepend_bos = bool(getattr(adapter.cfg, "default_prepend_bos", False))
    return infer_padding(ids, tokenizer or adapter.tokenizer, prepend_bos)


def checked_attention_mask(
    ids: Tensor,
    attention_mask: Any,
    adapter: ModelAdapter,
    *,
    name: str = "attention_mask",
    ids_name: str = "input_ids",
) -> Tensor | None:
    """`attention_mask` as a bool tensor shaped like `ids` (checked: 1s and 0s; `name`
    and `ids_name` name both in errors), or when None the padding `adapter`'s model
    added (`model_padding`), or None."""
    if attention_mask is not None:
        return attention_mask_tensor(attention_mask, tuple(ids.shape), name, ids_name)
    return model_padding(ids, adapter)


def drop_targets_in_padding(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    targets: Tensor | None,
    anti_targets: Tensor | None,
) -> tuple[Tensor | None, Tensor | None]:
    """`(targets, anti_targets)` with none at padded positions, and no target where it
    is the padding after it (`next_token_targets` of a right-padded batch)."""
    mask = attention_mask
    if mask is None or bool(mask.all()):
        return targets, anti_targets
    next_ids = torch.cat([input_ids[..., 1:], input_ids[..., -1:]], dim=-1)
    next_real = torch.cat([mask[..., 1:], torch.ones_like(mask[..., -1:])], dim=-1)
    if targets is not None:
        into_padding = ~next_real & (targets == next_ids)
        targets = targets.masked_fill(~mask | into_padding, -1)
    if anti_targets is not None:
        anti_targets = anti_targets.masked_fill(~mask, -1)
    return targets, anti_targets


def padding_array(attention_mask: Tensor | None) -> np.ndarray | None:
    """`[..., pos]` True at padded positions, or None without padding."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return (~attention_mask).numpy()
