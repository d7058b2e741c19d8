"""Generating text from one layer: run the model up to the layer, decode with a lens.

`Lens.generate` calls `generate` here. Prompts of different lengths are left-padded and
masked. On a HookedTransformer each new token runs the blocks below the layer once, on
TransformerLens's key-value cache; a TransformerBridge has no cache through
TransformerLens, so there every step reruns those blocks on the whole sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from hooklens.errors import InputError
from hooklens.model import ModelAdapter

if TYPE_CHECKING:
    from hooklens.lenses.base import Lens

Prompts = str | Sequence[str] | Sequence[Sequence[int]] | Tensor


def left_padded(
    prompts: Prompts, model: Any, attention_mask: Tensor | None = None
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """`(tokens, attention_mask)`, prompts of different lengths padded on the left.

    Strings are tokenised as `model.to_tokens` would (with its BOS setting); a tensor is
    taken as is, with `attention_mask` if given (1 = real token).
    """
    if isinstance(prompts, Tensor):
        tokens = prompts.long().reshape(-1, prompts.shape[-1])
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens)
        if attention_mask.shape != tokens.shape:
            raise InputError(
                f"attention_mask {tuple(attention_mask.shape)} must match the tokens "
                f"{tuple(tokens.shape)}"
            )
        _check_left_padding(attention_mask)
        return tokens, attention_mask.long()
    if attention_mask is not None:
        raise InputError("attention_mask goes with a tensor of token ids, not with text")
    if isinstance(prompts, str):
        prompts = [prompts]
    rows = [
        model.to_tokens(p)[0].tolist() if isinstance(p, str) else [int(t) for t in p]
        for p in prompts
    ]
    if not rows or min(map(len, rows)) == 0:
        raise InputError("every prompt needs at least one token")
    width = max(map(len, rows))
    pad = _pad_id(model)
    tokens = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return tokens, mask


def _check_left_padding(mask: Tensor) -> None:
    # Padding must sit before the tokens: once a row has started, it stays real.
    started = mask.cumsum(-1) > 0
    if not torch.equal(mask.bool(), started) or not bool(mask[:, -1].all()):
        raise InputError("attention_mask must pad on the left (zeros, then ones, in each row)")


def _pad_id(model: Any) -> int:
    tokenizer = getattr(model, "tokenizer", None)
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


@torch.no_grad()
def generate(
    lens: Lens,
    model: Any,
    layer: int,
    input_ids: Prompts,
    do_sample: bool = True,
    temp: float = 1.0,
    max_new_tokens: int = 100,
    *,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, "batch pos_and_new"]:
    """Continue prompts by decoding layer `layer`'s residual with `lens`.

    `Lens.generate` is this function: call it as `lens.generate(model, layer, prompts)`.

    Each step runs the model up to block `layer` (its `resid_pre`; `n_layers` or -1
    for the final residual), reads the lens's next-token distribution at the last
    position, and samples from it (`do_sample=True`, at temperature `temp`) or
    takes its argmax. With the logit lens at the last layer and `do_sample=False`
    this is the model's own greedy decoding.

    Args:
        lens: the lens to decode with.
        model: the HookedTransformer or TransformerBridge the lens reads.
        layer: which layer's residual to decode.
        input_ids: a string, a list of strings or of token-id lists (of any
            lengths: they are left-padded and masked), or a `[batch, pos]` tensor
            (with `attention_mask` if it is left-padded).
        do_sample: sample (True) or decode greedily (False).
        temp: sampling temperature.
        max_new_tokens: how many tokens to add (always that many; no stop at EOS).
        attention_mask: `[batch, pos]`, 0 on left padding, for a tensor `input_ids`.
        generator: a `torch.Generator` for reproducible sampling.

    Returns:
        `[batch, pos + max_new_tokens]`: the left-padded prompts and the new tokens;
        `model.to_string(out[:, -max_new_tokens:])` decodes the continuations.

    Examples:
        >>> out = lens.generate(model, 15, ["The capital of France is"], max_new_tokens=8)
        ...                                                         # doctest: +SKIP
        >>> model.to_string(out[:, -8:])                            # doctest: +SKIP
    """
    adapter = ModelAdapter(model)
    if adapter.model is not lens.adapter.model and adapter.fingerprint != lens.adapter.fingerprint:
        raise InputError("the lens was made for another model; build it from this one")
    row = lens.layer_index(layer)
    if row < lens.n_layers and lens.component != "resid_pre":
        raise InputError(
            f"generate reads the residual stream before block {row} (resid_pre); this lens "
            f"reads {lens.component}"
        )
    if do_sample and not temp > 0:
        raise InputError(f"temp must be positive when sampling, got {temp}")
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be at least 0, got {max_new_tokens}")
    tokens, mask = left_padded(input_ids, model, attention_mask)
    tokens, mask = tokens.to(adapter.device), mask.to(adapter.device)
    hooked = adapter.kind == "HookedTransformer"
    step = _HookedSteps(model, row) if hooked else _BridgeSteps(adapter, row)
    hidden = step.first(tokens, mask)  # [batch, d_model] at the last position
    for i in range(max_new_tokens):
        logits = lens.forward(hidden, row).float()
        if do_sample:
            probs = torch.softmax(logits / temp, dim=-1)
            next_token = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            next_token = logits.argmax(-1)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if i + 1 < max_new_tokens:
            hidden = step.next(tokens, mask)
    return tokens


class _HookedSteps:
    """HookedTransformer: the prompt once, then one token at a time on the KV cache."""

    def __init__(self, model: Any, row: int):
        self.model, self.row = model, row

    def first(self, tokens: Tensor, mask: Tensor) -> Tensor:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        self.cache = TransformerLensKeyValueCache.init_cache(
            self.model.cfg, self.model.cfg.device, tokens.shape[0]
        )
        return self._run(tokens, mask)

    def next(self, tokens: Tensor, mask: Tensor) -> Tensor:
        return self._run(tokens[:, -1:], mask[:, -1:])

    def _run(self, tokens: Tensor, mask: Tensor) -> Tensor:
        residual = self.model(
            tokens, attention_mask=mask, past_kv_cache=self.cache, stop_at_layer=self.row
        )
        return residual[:, -1]


class _BridgeSteps:
    """TransformerBridge: the whole sequence every step, positions counted from the
    first real token of each row (as Hugging Face's generate does); the residual is
    captured by a hook, so the final residual works like any other layer."""

    def __init__(self, adapter: ModelAdapter, row: int):
        self.model = adapter.model
        self.hook = (
            adapter.final_hook_name
            if row == adapter.n_layers
            else adapter.hook_name("resid_pre", row)
        )

    def first(self, tokens: Tensor, mask: Tensor) -> Tensor:
        return self.next(tokens, mask)

    def next(self, tokens: Tensor, mask: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def capture(residual: Tensor, hook: Any) -> None:
            captured.append(residual[:, -1])

        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with self.model.hooks(fwd_hooks=[(self.hook, capture)]):
            self.model(tokens, attention_mask=mask, position_ids=positions, return_type=None)
        return captured[-1]
