"""Never worse than the start: per layer, the better of the start and the fine-tune.

A KL fine-tune lowers the sum of the layers' losses on the training batches; a layer
whose start (the fast fit, or the identity) was already good can come out worse, on
held-out text, than it went in (the best layers of SmolLM2 did, issue 28). At the end
of a run `keep_better` measures every layer's held-out KL(final ‖ lens) with the start's
translator and with the fine-tuned one, and keeps, layer by layer, whichever is lower.
The lens is then at every layer at most its start on those tokens.

Examples:
    >>> from hooklens import TunedLens
    >>> lens = TunedLens.from_model(model)
    >>> start = {k: v.clone() for k, v in lens.state_dict().items()}
    >>> with torch.no_grad():
    ...     _ = lens[1].bias.fill_(3.0)  # a "fine-tune" that ruins layer 1
    >>> choices = keep_better(model, lens, start, [tokens])
    >>> [choice["kept"] for choice in choices]
    ['fine-tune', 'start', 'fine-tune', 'fine-tune']
    >>> print(*lost_lines(choices))
    layer 1: fine-tune ... > start ... nats; kept the start
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypedDict

import torch
from torch import Tensor

from hooklens.core import distributed
from hooklens.core.chunked_kl import (
    kl_to_target,
    target_distribution,
    target_projection,
    weight_chunks,
)
from hooklens.lenses.tuned import TunedLens


class LayerChoice(TypedDict):
    """One layer's held-out KL (nats per token) with its start's translator and with the
    fine-tuned one, and which of the two the lens kept."""

    layer: int
    start_kl: float
    tuned_kl: float
    kept: Literal["start", "fine-tune"]


def held_out_kl(
    model: Any,
    lens: TunedLens,
    token_batches: Iterable[Tensor],
    states: Mapping[str, Mapping[str, Tensor]] | None = None,
    *,
    vocab_chunk: int = 8192,
) -> dict[str, list[float]]:
    """`{name: per-layer mean KL(final ‖ lens)}` over the tokens of `token_batches`, for
    `lens` with each of `states` (state dicts) loaded in turn; `lens` ends as it began.

    Each batch runs the model once for every state; the matmuls are float32 (exact).
    Without `states`: `{"lens": ...}` of the lens as it is.
    """
    current = {k: v.detach().clone() for k, v in lens.state_dict().items()}
    states = states if states is not None else {"lens": current}
    adapter, unembed = lens.adapter, lens.unembed
    names = set(adapter.residual_hook_names(lens.component))
    w_chunks = weight_chunks(unembed.W_U, vocab_chunk, torch.float32)
    totals = {name: torch.zeros(lens.n_layers, dtype=torch.float64) for name in states}
    rows = 0
    try:
        with torch.no_grad():
            for tokens in token_batches:
                logits, cache = model.run_with_cache(
                    tokens.to(adapter.device), names_filter=names.__contains__
                )
                target, neg_entropy = target_distribution(
                    logits.float().reshape(-1, logits.shape[-1])
                )
                del logits
                projection = None
                if not unembed.logit_softcap:
                    projection = target_projection(unembed, target, w_chunks=w_chunks)
                n = target.shape[0]
                rows += n
                hidden = [
                    cache[adapter.hook_name(lens.component, layer)].reshape(n, -1)
                    for layer in range(lens.n_layers)
                ]
                for name, state in states.items():
                    lens.load_state_dict(state)
                    for layer in range(lens.n_layers):
                        translated = lens.transform_hidden(hidden[layer], layer)
                        kl = kl_to_target(
                            unembed, translated, target, neg_entropy, projection, w_chunks=w_chunks
                        )
                        totals[name][layer] += kl.item() * n
    finally:
        lens.load_state_dict(current)
    return {name: (total / max(rows, 1)).tolist() for name, total in totals.items()}


def keep_better(
    model: Any,
    lens: TunedLens,
    start: Mapping[str, Tensor],
    token_batches: Iterable[Tensor],
    *,
    vocab_chunk: int = 8192,
) -> list[LayerChoice]:
    """Keep, per layer, the translator of `lens` (fine-tuned, changed in place) or of
    `start` (the same lens's state dict before the fine-tune), whichever has the lower
    mean KL(final ‖ lens) on `token_batches` (held-out text); a tie keeps the fine-tune.

    Under torchrun every rank passes the same batches and rank 0's choice is taken.
    """
    tuned = {k: v.detach().clone() for k, v in lens.state_dict().items()}
    kls = held_out_kl(
        model, lens, list(token_batches), {"start": start, "tuned": tuned}, vocab_chunk=vocab_chunk
    )
    choices: list[LayerChoice] = [
        {
            "layer": layer,
            "start_kl": round(start_kl, 6),
            "tuned_kl": round(tuned_kl, 6),
            "kept": "start" if start_kl < tuned_kl else "fine-tune",
        }
        for layer, (start_kl, tuned_kl) in enumerate(zip(kls["start"], kls["tuned"], strict=True))
    ]
    choices = distributed.broadcast_object(choices)
    kept = dict(tuned)
    for choice in choices:
        if choice["kept"] == "start":
            prefix = f"layer_translators.{choice['layer']}."
            kept |= {k: v for k, v in start.items() if k.startswith(prefix)}
    lens.load_state_dict(kept)
    return choices


def lost_lines(choices: Iterable[LayerChoice]) -> list[str]:
    """One line for each layer where the fine-tune lost to the start."""
    return [
        f"layer {c['layer']}: fine-tune {c['tuned_kl']:.3f} > start {c['start_kl']:.3f} nats; "
        "kept the start"
        for c in choices
        if c["kept"] == "start"
    ]
