"""Residual streams out of a TransformerLens `ActivationCache`, and THE row convention.

Every lens, trajectory, causal basis and table in hooklens counts the residual stream in
**rows**, and this table is the one statement of what each row is (`row_hook_names`
codes it; other docstrings link here instead of restating it). With `n = n_layers` and
`component` the lens's residual (`lens.component`, `resid_pre` by default):

| row | `resid_pre` (the default) | `resid_mid` | `resid_post` |
|---|---|---|---|
| `l < n` | input of block `l` | block `l` between attn and MLP | output of block `l` |
| `n` (or `-1`) | final residual | final residual | final residual |
| trajectory's `n` | the model's logits | the model's logits | the model's logits |

- Row `l < n` is the hook `blocks.l.hook_{component}`; row 0 of `resid_pre` is the
  embeddings.
- The final residual is `blocks.{n-1}.hook_resid_post`, the output of the last block,
  which the model's final norm and unembedding read; every lens reads it exactly as the
  model does. For `resid_post`, rows `n - 1` and `n` are therefore the same tensor.
- A lens reads row `l < n` as `unembed(lens.transform_hidden(h, l))`.
- In a `PredictionTrajectory` the last row, `n` ("output"), holds the model's own logits
  (what row `n` reads, checked against them), and rows `0..n-1` the lens's readouts.
- A TransformerBridge's cache may hold `resid_pre`/`resid_post` under its canonical
  names `blocks.l.hook_in`/`hook_out` (`ModelAdapter.cached_names`).
- A model that runs attention and MLP in parallel has no `resid_mid`.
- Row indices may be negative (from the end), numpy integers or 0-d integer tensors
  (`hooklens._checks.layer_index`).
- The Jacobian lens's "source layer ℓ" (TransformerLens's count) is the output of block
  ℓ: row ℓ + 1 of a `resid_pre` lens, row ℓ of a `resid_post` one
  (`hooklens.lenses.jacobian`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, SupportsIndex

import torch
from jaxtyping import Float
from torch import Tensor

from hooklens._checks import layer_index
from hooklens.core.adapter import ModelAdapter, check_same_model
from hooklens.errors import InputError, InputTypeError, LensMismatchError, MissingHookError


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
    adapter: ModelAdapter, layer: SupportsIndex, component: str = "resid_pre"
) -> tuple[str, ...]:
    """Every name a cache may hold lens row `layer` under, its hook's name first:
    `component` of block `layer`, or for row `n_layers` (the final residual) the last
    block's `resid_post`."""
    row = layer_index(layer, adapter.n_layers)
    if row == adapter.n_layers:
        return adapter.cached_names("resid_post", adapter.n_layers - 1)
    return adapter.cached_names(component, row)


def get_residual(
    cache: Any, layer: SupportsIndex, component: str = "resid_pre", model: Any = None
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
    cache: Any, layer: SupportsIndex, component: str, adapter: ModelAdapter
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
        >>> logits, cache = model.run_with_cache(tokens)
        >>> residual_stack(cache, "resid_pre").shape  # [n_layers + 1, batch, pos, d_model]
        torch.Size([5, 1, 6, 32])
    """
    return torch.stack([h for _, h in iter_residuals(cache, component, model)])
