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

from hooklens.errors import MissingHookError
from hooklens.model import ModelAdapter


def _adapter_for(cache: Any, model: Any) -> ModelAdapter:
    model = model if model is not None else getattr(cache, "model", None)
    if model is None:
        raise ValueError("this cache does not know its model; pass model=... explicitly")
    return model if isinstance(model, ModelAdapter) else ModelAdapter(model)


def get_residual(
    cache: Any, layer: int, component: str = "resid_pre", model: Any = None
) -> Float[Tensor, "... pos d_model"]:
    """One row of the residual stream from `cache` (row `n_layers` = final residual)."""
    adapter = _adapter_for(cache, model)
    n_rows = adapter.n_layers + 1
    if not -n_rows <= layer < n_rows:
        raise IndexError(
            f"layer {layer} is out of range: rows are 0..{adapter.n_layers} "
            f"({adapter.n_layers} = the final residual after the last block)"
        )
    row = layer % n_rows
    names = (
        adapter.cached_names("resid_post", adapter.n_layers - 1)  # the final residual
        if row == adapter.n_layers
        else adapter.cached_names(component, row)
    )
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
