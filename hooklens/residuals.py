"""Residual streams out of a TransformerLens `ActivationCache`.

Rows are indexed like a lens: row `l < n_layers` is `component` at block `l`, and the
last row (`n_layers`) is the final residual, the output of the last block, which the
model's own final norm and unembedding read. For `resid_post` the last two rows are the
same tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooklens.errors import InputError, InputTypeError, LensMismatchError, MissingHookError
from hooklens.model import ModelAdapter, check_same_model
from hooklens.validation import layer_index


def _adapter_for(cache: Any, model: Any) -> ModelAdapter:
    model = model if model is not None else getattr(cache, "model", None)
    if model is None:
        raise InputError("this cache does not know its model; pass model=... explicitly")
    return model if isinstance(model, ModelAdapter) else ModelAdapter(model)


def check_cache(adapter: ModelAdapter, cache: Any, reader: str | None = None) -> None:
    """Refuse a cache made by another model than `adapter`'s.

    The cache must hold no block beyond the model's last, and its own model (which
    TransformerLens records) must have as many blocks: a 4-layer model's cache read
    with a 3-layer lens or `model=` would otherwise give blocks 0–2 silently, and
    block 2's output as "the final residual". Every reader of a cache (lenses,
    trajectories, `get_residual`, `residual_stack`) checks here.

    `reader` None: a lens reads the cache, and the cache's model must also share the
    lens's fingerprint (sizes, weight processing, unembedding), since the lens turns
    the residuals into predictions. Otherwise `reader` names the model whose rows are
    read (`get_residual(..., model=m)`): the residuals are the cache's own tensors
    whatever its weights, so only the rows, its layer count, must match.
    """
    cached = getattr(cache, "cache_dict", cache)
    if not hasattr(cached, "keys"):
        raise InputTypeError(
            f"expected a TransformerLens ActivationCache (or a dict of hook name → tensor), "
            f"got {type(cache).__name__}"
        )
    if reader is None:
        check_same_model(adapter, getattr(cache, "model", None))
        reader, advice = "the lens's model", "Use a lens made for the model that made it."
    else:
        advice = (
            "Read it with the model that made it (leave model= out: a cache from "
            "run_with_cache knows its model), or run this model to get its own cache."
        )
    n_layers = adapter.n_layers
    own = _cache_model_layers(cache)
    if own is not None and own != n_layers:
        wrong = (
            f"block {n_layers - 1}'s output would be read as the final residual"
            if own > n_layers
            else f"its block {own} is missing"
            if own == n_layers - 1
            else f"its blocks {own}..{n_layers - 1} are missing"
        )
        raise LensMismatchError(
            f"this cache comes from a model with {own} blocks, but {reader} has "
            f"{n_layers} blocks: {wrong}. {advice}"
        )
    deepest = _deepest_block(cached)
    if deepest is not None and deepest >= n_layers:
        raise LensMismatchError(
            f"this cache holds blocks up to {deepest}, but {reader} has {n_layers} blocks "
            f"(0..{n_layers - 1}): it comes from another model, whose last block is not "
            f"block {n_layers - 1}. {advice}"
        )


def _cache_model_layers(cache: Any) -> int | None:
    """The layer count of the model the cache records (None: none recorded)."""
    model = getattr(cache, "model", None)
    if model is None:
        return None
    try:
        return ModelAdapter(model).n_layers
    except TypeError:
        return None  # not a TransformerLens model: its keys still tell


def _deepest_block(cached: Any) -> int | None:
    """The largest `l` of the cache's `blocks.{l}.*` names, or None if it has none."""
    blocks = [
        int(parts[1])
        for parts in (str(name).split(".") for name in cached)
        if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit()
    ]
    return max(blocks, default=None)


def row_hook_names(
    adapter: ModelAdapter, layer: int, component: str = "resid_pre"
) -> tuple[str, ...]:
    """Every name a cache may hold lens row `layer` under, its hook's name first:
    `component` of block `layer`, or for row `n_layers` (the final residual) the last
    block's `resid_post`."""
    row = layer_index(layer, adapter.n_layers)
    if row == adapter.n_layers:
        return adapter.cached_names("resid_post", adapter.n_layers - 1)
    return adapter.cached_names(component, row)


def get_residual(
    cache: Any, layer: int, component: str = "resid_pre", model: Any = None
) -> Float[Tensor, "... pos d_model"]:
    """One row of the residual stream from `cache` (row `n_layers` = final residual).

    `model` (default the cache's own) decides the rows; a cache of another model (more
    blocks, other sizes or weights) is refused (`LensMismatchError`), not read as if
    its blocks were the model's.
    """
    adapter = _adapter_for(cache, model)
    check_cache(adapter, cache, _reader(model))
    return _residual(cache, layer, component, adapter)


def _reader(model: Any) -> str:
    return "the cache's own model" if model is None else "the model passed as model="


def _residual(
    cache: Any, layer: int, component: str, adapter: ModelAdapter
) -> Float[Tensor, "... pos d_model"]:
    """`get_residual` of a cache `check_cache` passed."""
    names = row_hook_names(adapter, layer, component)
    name = names[0]
    cached = getattr(cache, "cache_dict", cache)
    found = next((n for n in names if n in cached), None)
    if found is None:
        block = int(name.split(".")[1])
        deepest = _deepest_block(cached)
        if deepest is not None and block > deepest:
            raise MissingHookError(
                f"the cache has no {name!r}: its deepest block is {deepest}, but the model "
                f"has {adapter.n_layers} blocks. It comes from a model with fewer layers "
                "(read it with that model), or was made with a names_filter or "
                "stop_at_layer that left the later blocks out (re-run without them)."
            )
        raise MissingHookError(
            f"the cache has no {name!r}; it was probably made with a names_filter that "
            "left it out. Re-run with model.run_with_cache(tokens, names_filter="
            f"ModelAdapter(model).residual_hook_names({component!r})), or without a filter."
        )
    return cached[found]


def iter_residuals(
    cache: Any, component: str = "resid_pre", model: Any = None
) -> Iterator[tuple[int, Float[Tensor, "... pos d_model"]]]:
    """Yield `(row, residual)` for rows 0..n_layers without stacking them (the cache is
    checked once, as in `get_residual`)."""
    adapter = _adapter_for(cache, model)
    check_cache(adapter, cache, _reader(model))
    for layer in range(adapter.n_layers + 1):
        yield layer, _residual(cache, layer, component, adapter)


def residual_stack(
    cache: Any, component: str = "resid_pre", model: Any = None
) -> Float[Tensor, "layer ... pos d_model"]:
    """Stack `component` over every block plus the final residual.

    Returns `[n_layers + 1, *batch, pos, d_model]`; the cache's own leading axes are
    kept (none for a cache made with `remove_batch_dim=True`).

    Examples:
        >>> logits, cache = model.run_with_cache(tokens)          # doctest: +SKIP
        >>> residual_stack(cache, "resid_pre").shape               # doctest: +SKIP
        torch.Size([31, 1, 12, 576])
    """
    return torch.stack([h for _, h in iter_residuals(cache, component, model)])
