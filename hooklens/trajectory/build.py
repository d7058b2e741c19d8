"""What a trajectory's constructors read before streaming: the residuals of a cache
(`read_cache`, with the check that the model's logits belong to it) and a run of the
model with only the lens's hooks cached (`run_model`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooklens._checks import check_id_range, tokens_cut_notice
from hooklens.core import ModelAdapter, check_same_model, normalize_component
from hooklens.core.residuals import check_cache, get_residual
from hooklens.errors import InputError, LensMismatchError, TextCutWarning, warn
from hooklens.lenses.base import Lens
from hooklens.trajectory.inputs import as_long, attention_mask_tensor, model_padding


def lens_component(lens: Any, residual_component: str | None) -> str:
    """The residual a trajectory reads: the one asked for, else the lens's own. A lens
    bound to one residual (a Jacobian lens) refuses another (`LensMismatchError`)."""
    if isinstance(lens, Lens):
        return lens._check_component(residual_component)
    return normalize_component(residual_component or "resid_pre")


def check_logits_match(
    lens: Lens, final: Float[Tensor, "... pos d_model"], model_logits: Tensor
) -> None:
    """The model's logits must be what its unembedding reads from the final residual.

    Checked on the last position of each sequence (one `[batch, vocab]` matmul), as
    log-probabilities, with a tolerance far above rounding (kernels, dtypes) and far
    below what logits of another model or another run differ by.
    """
    if final.shape[:-1] != model_logits.shape[:-1] or final.shape[-2] == 0:
        return  # the shape checks of the constructor say what is wrong
    if model_logits.shape[-1] != lens.unembed.d_vocab:
        return
    with torch.no_grad():
        h = final[..., -1, :].reshape(-1, final.shape[-1])
        ours = torch.log_softmax(lens.unembed(h).double(), dim=-1)
        theirs = torch.log_softmax(
            model_logits[..., -1, :].reshape(-1, model_logits.shape[-1]).double(), dim=-1
        ).to(ours.device)
    if not bool(torch.isfinite(theirs).any(dim=-1).all()):
        return  # NaN logits: the constructor's check names them
    low_precision = model_logits.dtype in (torch.float16, torch.bfloat16)
    tolerance = (0.05 if low_precision else 0.01) * (1 + theirs.abs().max().item())
    gap = (ours - theirs).abs().nan_to_num(nan=0.0, posinf=0.0).max().item()
    if gap > tolerance:
        raise LensMismatchError(
            "model_logits are not what the lens's model reads from this cache's final "
            f"residual (log-probabilities differ by up to {gap:.3g}): are the logits and "
            "the cache from the same run of the lens's model? (If hooks changed the final "
            "norm or the unembedding on purpose, pass check_logits=False.)"
        )


def read_cache(
    lens: Lens,
    input_ids: Any,
    cache: Any,
    model_logits: Any,
    residual_component: str | None,
    attention_mask: Any,
    check_logits: bool,
) -> tuple[list[Tensor], str, Any, Any]:
    """`(residuals, component, tokenizer, attention_mask)` of a cache: one residual per
    lens layer, the tokenizer of the cache's model (else the lens's), and by default
    the padding TransformerLens added to the batch."""
    component = lens_component(lens, residual_component)
    adapter = lens.adapter
    check_cache(adapter, cache)
    ids = as_long(input_ids, "input_ids")
    residuals = [get_residual(cache, layer, component, adapter) for layer in range(lens.n_layers)]
    if check_logits and isinstance(model_logits, Tensor):
        final = get_residual(cache, lens.n_layers, component, adapter)
        check_logits_match(lens, final, model_logits)
    tokenizer = getattr(getattr(cache, "model", None), "tokenizer", None) or adapter.tokenizer
    if attention_mask is None and ids is not None:
        attention_mask = model_padding(ids, adapter, tokenizer)
    return residuals, component, tokenizer, attention_mask


def text_ids(model: Any, adapter: ModelAdapter, text: str) -> Tensor:
    """The token ids of `text`, cut to the model's context with a `TextCutWarning`."""
    if not text:
        raise InputError("the text is empty: pass at least one token's worth of text")
    if adapter.tokenizer is None:
        raise InputError(
            "this model has no tokenizer, so it cannot read text: pass token ids, "
            "or set model.set_tokenizer(tokenizer)"
        )
    ids: Tensor = model.to_tokens(text, truncate=False)[0]
    n_ctx = getattr(adapter.cfg, "n_ctx", None)
    if n_ctx and ids.shape[-1] > n_ctx:
        # The report's notice, so both say a cut the same way.
        notice = tokens_cut_notice(ids.shape[-1], n_ctx, n_ctx)
        dropped = ids.shape[-1] - n_ctx
        warn(
            f"{notice}: the last {dropped} tokens are not "
            f"read. Split the text into pieces of at most {n_ctx} tokens to read "
            "them all, or pass the token ids you mean to read",
            TextCutWarning,
        )
        ids = ids[:n_ctx]
    return ids


def run_model(
    lens: Lens,
    model: Any,
    input_ids: Any,
    residual_component: str | None,
    fwd_hooks: Sequence[tuple[Any, Any]],
    attention_mask: Any,
) -> tuple[Tensor, Tensor, Any, str]:
    """`(ids, logits, cache, component)` of one run of `model` on `input_ids` (ids, or a
    string to tokenize), caching only the residual hooks the lens reads, with
    `fwd_hooks` active."""
    adapter = ModelAdapter(model)
    if lens.adapter.model is not model:
        check_same_model(lens.adapter, model, "this model")
    if isinstance(input_ids, str):
        input_ids = text_ids(model, adapter, input_ids)
    ids = as_long(input_ids, "input_ids")
    assert ids is not None
    if ids.ndim == 0 or ids.numel() == 0:
        raise InputError(
            f"input_ids must be [..., pos] with at least one token, got {tuple(ids.shape)}"
        )
    check_id_range(ids, "input_ids", int(adapter.cfg.d_vocab), allow_missing=False)
    n_ctx = getattr(adapter.cfg, "n_ctx", None)
    if n_ctx and ids.shape[-1] > n_ctx:
        raise InputError(
            f"input_ids hold {ids.shape[-1]} positions, more than the model's context "
            f"of n_ctx={n_ctx} tokens: cut them (input_ids[..., :{n_ctx}]) or split "
            "the text"
        )
    component = lens_component(lens, residual_component)
    names = adapter.residual_hook_names(component)
    hooks = model.hooks(fwd_hooks=list(fwd_hooks)) if fwd_hooks else contextlib.nullcontext()
    run_ids = ids if ids.ndim > 1 else ids[None]
    extra = {}
    if attention_mask is not None:
        mask = attention_mask_tensor(attention_mask, tuple(ids.shape))
        extra["attention_mask"] = mask.reshape(run_ids.shape).long().to(adapter.device)
    with torch.no_grad(), hooks:
        logits, cache = model.run_with_cache(
            run_ids.to(adapter.device), names_filter=lambda name: name in names, **extra
        )
    if ids.ndim == 1:
        logits = logits[0]
        cache = cache.remove_batch_dim()
    return ids, logits, cache, component
