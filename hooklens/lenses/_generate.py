"""Internal. Generating text from one layer: run the model up to the layer, decode with a lens.

`Lens.generate` calls `generate` here, typed against the `LensLike` protocol (what it
reads of a lens), so this module imports no lens. Prompts of different lengths are
left-padded and masked. Where the model has a key-value cache
(`ModelAdapter.has_kv_cache`: a HookedTransformer) each new token runs the blocks below
the layer once, on that cache; a TransformerBridge has no cache through TransformerLens,
so there every step reruns those blocks on the whole sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklens.core import ModelAdapter
from hooklens.errors import InputError

Prompts = str | Sequence[str] | Sequence[Sequence[int]] | Tensor


@runtime_checkable
class LensLike(Protocol):
    """What decoding reads of a lens (`hooklens.lenses.base.Lens` is one)."""

    @property
    def n_layers(self) -> int: ...

    @property
    def component(self) -> str: ...

    @property
    def adapter(self) -> ModelAdapter: ...

    def layer_index(self, idx: int) -> int:
        """`idx` as a row in `0..n_layers`."""
        ...

    def forward(self, h: Float[Tensor, "... d_model"], idx: int) -> Float[Tensor, "... d_vocab"]:
        """Logits the lens reads from hidden state `h` of row `idx`."""
        ...


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
    lens: LensLike,
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
    """`lens.generate(model, layer, input_ids, ...)`: see `Lens.generate` for the arguments."""
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
    step = _CachedSteps(model, row) if adapter.has_kv_cache else _WholeSequenceSteps(adapter, row)
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


class _CachedSteps:
    """A model with a key-value cache (HookedTransformer): the prompt once, then one token
    at a time on the cache, stopping before block `row`."""

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


class _WholeSequenceSteps:
    """A model without one (TransformerBridge): the whole sequence every step, positions
    counted from the first real token of each row (as Hugging Face's generate does); the residual is
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
