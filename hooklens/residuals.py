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


def check_cache(adapter: ModelAdapter, cache: Any) -> None:
    """Refuse a cache made by another model than `adapter`'s.

    The cache's own model (TransformerLens records it) must be `adapter`'s or share its
    fingerprint, and the cache must hold no block beyond the model's last: a 4-layer
    model's cache read with a 3-layer lens would otherwise give blocks 0–2 silently.
    """
    cached = getattr(cache, "cache_dict", cache)
    if not hasattr(cached, "keys"):
        raise InputTypeError(
            f"expected a TransformerLens ActivationCache (or a dict of hook name → tensor), "
            f"got {type(cache).__name__}"
        )
    check_same_model(adapter, getattr(cache, "model", None))
    beyond = f"blocks.{adapter.n_layers}."
    if any(str(name).startswith(beyond) for name in cached):
        deepest = max(
            int(str(name).split(".")[1])
            for name in cached
            if str(name).startswith("blocks.") and str(name).split(".")[1].isdigit()
        )
        raise LensMismatchError(
            f"this cache holds blocks up to {deepest}, but the lens's model has "
            f"{adapter.n_layers} blocks (0..{adapter.n_layers - 1}): it comes from another "
            "model. Use a lens made for that model."
        )


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
    """One row of the residual stream from `cache` (row `n_layers` = final residual)."""
    adapter = _adapter_for(cache, model)
    names = row_hook_names(adapter, layer, component)
    name = names[0]
    cached = getattr(cache, "cache_dict", cache)
    found = next((n for n in names if n in cached), None)
    if found is None:
        raise MissingHookError(
            f"the cache has no {name!r}; it was probably made with a names_filter that "
            "left it out. Re-run with model.run_with_cache(tokens, names_filter="
            f"ModelAdapter(model).residual_hook_names({component!r})), or without a filter."
        )
    return cached[found]


def iter_residuals(
    cache: Any, component: str = "resid_pre", model: Any = None
) -> Iterator[tuple[int, Float[Tensor, "... pos d_model"]]]:
    """Yield `(row, residual)` for rows 0..n_layers without stacking them."""
    adapter = _adapter_for(cache, model)
    for layer in range(adapter.n_layers + 1):
        yield layer, get_residual(cache, layer, component, adapter)


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
