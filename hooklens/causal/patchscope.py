"""Patchscopes: read a hidden state by patching it into another run.

Ghandeharioun et al., "Patchscopes: A Unifying Framework for Inspecting Hidden
Representations of Language Models" (ICML 2024). The hidden state `h` of a source run
(model M, its tokens, layer ℓ, position i) is optionally mapped (`f(h)`), written over
the residual of a target run (model M*, a target prompt, its placeholder position i*,
layer ℓ*), and the target's next-token distribution at i* is the reading. The logit
lens is the special case "target = source, ℓ* = the last layer"; the token-identity
target prompt (`token_identity_prompt`) reads early layers far better.

`patchscope` reads every (source layer, source position) cell and returns a
`PredictionTrajectory` (`from_log_probs`): rows are the source's layers, the last row the
source model's own output, so every statistic, label, figure and comparison works on it,
e.g. `kl_divergence` with a lens's trajectory of the same tokens, cell by cell.

Cost. The source runs once (its residuals cached). For each source layer the target
prompt runs once per group of `batch_size` source positions, each copy of the prompt
patched with another position's state: `n_layers × ceil(pos / batch_size)` target calls
instead of one per cell. Where the target model can start mid-network
(`ModelAdapter.can_start_at_layer`, a HookedTransformer) and the component is
`resid_pre`, each call runs only the blocks from ℓ* on, and only the placeholder and
the tokens after it: the tokens before it are untouched by the patch (causal
attention), so their keys and values are computed once and shared. Only the
placeholder's row is unembedded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from hooklens.core import ModelAdapter, Unembed, normalize_component
from hooklens.errors import InputError
from hooklens.trajectory import PredictionTrajectory, next_token_targets

Mapping = Callable[[Float[Tensor, "n d_source"], int], Float[Tensor, "n d_target"]]
"""`f(states, source_layer)`: source hidden states to ones the target model reads."""

IDENTITY_TEXT = "cat -> cat; 1135 -> 1135; hello -> hello; ?"
"""The paper's token-identity prompt: its last token (`?`) is the placeholder."""

DESCRIPTION_TEXT = (
    "Syria: Country in the Middle East. Leonardo DiCaprio: American actor. "
    "Samsung: South Korean multinational electronics corporation. x"
)
"""The paper's description prompt (entity descriptions): its last token is the placeholder."""


@dataclass(frozen=True)
class TargetPrompt:
    """A target prompt's token ids `[1, pos]` and the position a state is patched into."""

    ids: Int[Tensor, "1 pos"]
    placeholder: int
    text: str = ""

    def __post_init__(self) -> None:
        n = self.ids.shape[-1]
        if not -n <= self.placeholder < n:
            raise InputError(f"placeholder {self.placeholder} is outside the {n}-token prompt")


def target_prompt(model: Any, text: str, marker: str | None = None) -> TargetPrompt:
    """`text` as a target prompt. The placeholder is its last token, or, with `marker`,
    the token that stands where `marker` is in `text` (written as the marker itself).

    Examples:
        >>> prompt = target_prompt(model, "The cat sat on the x", marker="x")
        >>> prompt.placeholder == prompt.ids.shape[-1] - 1
        True
    """
    ids = model.to_tokens(text)
    if marker is None:
        return TargetPrompt(ids, ids.shape[-1] - 1, text)
    if text.count(marker) != 1:
        raise InputError(f"the target prompt must hold the marker {marker!r} exactly once")
    before = model.to_tokens(text[: text.index(marker) + len(marker)])
    n = before.shape[-1]
    if not torch.equal(ids[0, :n], before[0]):
        raise InputError(
            f"the marker {marker!r} merges with the text after it into one token; "
            "put a space or punctuation after it"
        )
    return TargetPrompt(ids, n - 1, text)


def token_identity_prompt(model: Any) -> TargetPrompt:
    """The paper's token-identity prompt for `model`'s tokenizer, patched at its `?`."""
    return target_prompt(model, IDENTITY_TEXT)


def description_prompt(model: Any) -> TargetPrompt:
    """The paper's description prompt for `model`'s tokenizer, patched at its final `x`."""
    return target_prompt(model, DESCRIPTION_TEXT)


def patchscope(
    model: Any,
    tokens: Int[Tensor, "1 pos"] | Int[Tensor, " pos"],
    target: TargetPrompt | None = None,
    **options: Any,
) -> PredictionTrajectory:
    """Read every (layer, position) state of `model` on `tokens` through a target run,
    as a trajectory: `patchscope_log_probs`'s rows (its arguments), the last one the
    source model's output; targets are the next source tokens. With `positions=`, the
    columns are the positions read, in that order.

    Examples:
        >>> ids = model.to_tokens("The capital of France is")
        >>> scope = patchscope(model, ids, target_prompt(model, "one two x", marker="x"),
        ...                    progress=False)
        >>> scope.cross_entropy().stats.shape  # [batch, source layers + output, positions]
        (1, 5, 6)
    """
    ids = torch.as_tensor(tokens).reshape(1, -1)
    log_probs = patchscope_log_probs(model, ids, target, **options)
    targets = next_token_targets(ids)
    if options.get("positions") is not None:  # the columns are the positions read
        chosen = torch.as_tensor([int(p) for p in options["positions"]]) % ids.shape[-1]
        ids, targets = ids[:, chosen], targets[:, chosen]
    return PredictionTrajectory.from_log_probs(
        log_probs[None], ids, targets=targets, tokenizer=ModelAdapter(model).tokenizer
    )


def patchscope_log_probs(
    model: Any,
    tokens: Int[Tensor, "1 pos"] | Int[Tensor, " pos"],
    target: TargetPrompt | None = None,
    *,
    target_model: Any = None,
    target_layer: int | None = None,
    component: str = "resid_pre",
    mapping: Mapping | None = None,
    positions: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> Float[Tensor, "layer_and_output read_pos vocab"]:
    """The target's log-probabilities for every (layer, position) state of `model` on
    `tokens`, in the model's dtype: `[source layers + 1, read_pos, vocab]`, the last row
    the source model's own output (`read_pos` is every position, or `len(positions)`).

    Args:
        model: the source HookedTransformer or TransformerBridge.
        tokens: the source token ids, one sequence.
        target: the target prompt and its placeholder (default: the token-identity
            prompt, `token_identity_prompt(target_model)`).
        target_model: the model the states are patched into (default: `model`). It
            must share the source's vocabulary (the last row is the source's output).
        target_layer: the target layer to patch; default the source layer itself.
        component: the residual read and written (`resid_pre`, `resid_mid`, `resid_post`).
        mapping: `f(states, source_layer)` applied before patching (default: none), e.g.
            `fit_state_map(model, target_model, ...)`.
        positions: the source positions to read (default: all), in the order given.
        batch_size: source positions patched into copies of the target prompt per call.
        progress: show a progress bar over source layers.

    Examples:
        >>> ids = model.to_tokens("The capital of France is")
        >>> patchscope_log_probs(model, ids, progress=False).shape  # token-identity prompt
        torch.Size([5, 6, 96])
    """
    target_model = model if target_model is None else target_model
    source, goal = ModelAdapter(model), ModelAdapter(target_model)
    component = normalize_component(component)
    target = token_identity_prompt(target_model) if target is None else target
    ids = torch.as_tensor(tokens).reshape(1, -1)
    if source.d_vocab != goal.d_vocab:
        raise InputError(
            f"the target model's vocabulary ({goal.d_vocab}) is not the source's "
            f"({source.d_vocab}): a Patchscope's rows and the source's output must be "
            "distributions over the same tokens"
        )
    if target_layer is not None and not 0 <= target_layer < goal.n_layers:
        raise InputError(
            f"target_layer {target_layer} is out of range: the target model has blocks "
            f"0..{goal.n_layers - 1}"
        )
    if target_layer is None and goal.n_layers < source.n_layers:
        raise InputError(
            f"the target model has {goal.n_layers} blocks, fewer than the source's "
            f"{source.n_layers}: pass target_layer= to patch every state into one layer"
        )
    n = ids.shape[-1]
    if positions is None:
        chosen = torch.arange(n)
    else:
        chosen = torch.as_tensor([int(p) for p in positions], dtype=torch.long)
        if len(chosen) == 0 or not bool(((chosen >= -n) & (chosen < n)).all()):
            raise InputError(
                f"positions must be a non-empty list of positions of the {n}-token source, "
                f"got {list(positions)}"
            )
        chosen = chosen % n
    placeholder = target.placeholder % target.ids.shape[-1]
    starts_mid = goal.can_start_at_layer and component == "resid_pre"
    with torch.no_grad():
        suffix = _PromptSuffix(target_model, goal, target.ids, placeholder) if starts_mid else None
        names = {source.hook_name(component, layer) for layer in range(source.n_layers)}
        logits, cache = model.run_with_cache(
            ids.to(source.device), names_filter=lambda name: name in names
        )
        rows: list[Tensor] = []
        for layer in tqdm(range(source.n_layers), desc="patchscope", disable=not progress):
            states = cache[source.hook_name(component, layer)][0, chosen.to(source.device)]
            if mapping is not None:
                states = mapping(states, layer)
            into = layer if target_layer is None else target_layer
            read = []
            for start in range(0, states.shape[0], batch_size):
                some = states[start : start + batch_size]
                if suffix is not None:
                    read.append(suffix.log_probs(some, into))
                else:
                    read.append(
                        _patched_log_probs(
                            target_model, goal, target.ids, placeholder, component, into, some
                        )
                    )
            rows.append(torch.cat(read))
        output = logits[0, chosen.to(logits.device)]
        rows.append(torch.log_softmax(output.to(rows[0].dtype), dim=-1))
    return torch.stack(rows)


class _PromptSuffix:
    """The target prompt run from its placeholder on, mid-network (a HookedTransformer).

    Causal attention leaves the tokens before the placeholder as they were: their keys
    and values at every layer are computed once (a frozen key-value cache, shared by
    every copy), and each patched copy runs only the placeholder and what follows it,
    from block ℓ on, starting from the prompt's own `resid_pre` there. For the
    token-identity prompt (placeholder last) that is one token of the 21 per copy.
    """

    def __init__(self, model: Any, adapter: ModelAdapter, prompt: Tensor, placeholder: int):
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        self.model, self.adapter = model, adapter
        self.unembed = Unembed.from_model(adapter)
        prompt = prompt.to(adapter.device)
        wanted = {adapter.hook_name("resid_pre", layer) for layer in range(adapter.n_layers)}
        _, cache = model.run_with_cache(prompt, names_filter=wanted.__contains__)
        self.resid = [
            cache[adapter.hook_name("resid_pre", layer)][:, placeholder:]
            for layer in range(adapter.n_layers)
        ]  # [1, suffix, d_model] each
        self.prefix = None
        if placeholder > 0:
            self.prefix = TransformerLensKeyValueCache.init_cache(adapter.cfg, adapter.device, 1)
            mask = torch.ones_like(prompt[:, :placeholder])
            model(prompt[:, :placeholder], attention_mask=mask, past_kv_cache=self.prefix)
            self.prefix.freeze()
        self.length = prompt.shape[-1]

    def _prefix_for(self, n: int) -> Any:
        """The prefix's frozen cache, its batch axis expanded (not copied) to `n`."""
        if self.prefix is None:
            return None
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import (
            TransformerLensKeyValueCacheEntry,
        )

        entries = [
            TransformerLensKeyValueCacheEntry(
                entry.past_keys.expand(n, -1, -1, -1),
                entry.past_values.expand(n, -1, -1, -1),
                frozen=True,
            )
            for entry in self.prefix.entries
        ]
        mask = self.prefix.previous_attention_mask.expand(n, -1)
        return TransformerLensKeyValueCache(entries, mask, frozen=True)

    def log_probs(self, states: Float[Tensor, "n d_model"], layer: int) -> Float[Tensor, "n vocab"]:
        n = states.shape[0]
        patched = self.resid[layer].expand(n, -1, -1).clone()
        patched[:, 0] = states.to(patched.dtype)
        mask = torch.ones(n, self.length, dtype=torch.long, device=patched.device)
        out = self.model(
            patched,
            start_at_layer=layer,
            stop_at_layer=self.adapter.n_layers,
            past_kv_cache=self._prefix_for(n),
            attention_mask=mask,
        )
        return self.unembed.log_probs(out[:, 0])


def _patched_log_probs(
    model: Any,
    adapter: ModelAdapter,
    prompt: Int[Tensor, "1 pos"],
    placeholder: int,
    component: str,
    layer: int,
    states: Float[Tensor, "n d_model"],
) -> Float[Tensor, "n vocab"]:
    """The target's log-probabilities at `placeholder`, one copy of `prompt` per state,
    each with its state written over `component` of block `layer` there.

    Where the model can stop after its last block, the unembedding reads the
    placeholder's row alone: the other positions' `[pos, vocab]` logits are never made."""
    n = states.shape[0]
    index = torch.arange(n, device=states.device)
    stop = {"stop_at_layer": adapter.n_layers} if adapter.can_stop_at_layer else {}
    copies = prompt.expand(n, -1).to(adapter.device)
    name = adapter.hook_name(component, layer)
    hooks = [(name, _writer(index, placeholder, states))]
    out = model.run_with_hooks(copies, fwd_hooks=hooks, **stop)
    logits = Unembed.from_model(adapter)(out[:, placeholder]) if stop else out[:, placeholder]
    return torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def patchscope_generate(
    model: Any,
    tokens: Int[Tensor, "1 pos"] | Int[Tensor, " pos"],
    target: TargetPrompt | None = None,
    *,
    position: int = -1,
    layers: Sequence[int] | None = None,
    target_model: Any = None,
    target_layer: int | None = None,
    component: str = "resid_pre",
    mapping: Mapping | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temp: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool | None = None,
) -> Int[Tensor, "layer new"]:
    """What the target says after the patch: its continuation of the target prompt with
    the state of `position` at each source layer written over its placeholder.

    All layers run as one batch (copy ℓ of the target prompt carries layer ℓ's state).
    On a HookedTransformer the prompt runs once with the patch and each new token runs on
    its key-value cache (`use_cache=False` reruns the whole sequence each step, as a
    TransformerBridge always does); the patch stays in the prompt's keys and values.

    Args:
        target: the target prompt (default here: `description_prompt`); `model`,
            `tokens`, `target_model`, `target_layer`, `component` and `mapping` are as
            in `patchscope_log_probs`.
        position: the source position whose states are read.
        layers: the source layers (default: all).
        max_new_tokens: tokens generated per layer.
        do_sample: sample at temperature `temp` (with `generator`); default greedy.
        use_cache: use the key-value cache where the model has one (default).

    Returns:
        `[layer, max_new_tokens]` token ids; `model.to_string(row)` reads one.

    Examples:
        >>> ids = model.to_tokens("The capital of France is")
        >>> said = patchscope_generate(model, ids, layers=[1, 3], max_new_tokens=4)
        >>> said.shape
        torch.Size([2, 4])
    """
    target_model = model if target_model is None else target_model
    source, goal = ModelAdapter(model), ModelAdapter(target_model)
    component = normalize_component(component)
    target = description_prompt(target_model) if target is None else target
    ids = torch.as_tensor(tokens).reshape(1, -1)
    layers = list(range(source.n_layers)) if layers is None else [int(x) for x in layers]
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if do_sample and not temp > 0:
        raise InputError(f"temp must be positive when sampling, got {temp}")
    into = [layer if target_layer is None else target_layer for layer in layers]
    for layer in into:
        goal.hook_name(component, layer)  # refuses a layer the target does not have
    position = position % ids.shape[-1]
    names = {source.hook_name(component, layer) for layer in layers}
    _, cache = model.run_with_cache(ids.to(source.device), names_filter=lambda n: n in names)
    states = torch.stack(
        [cache[source.hook_name(component, layer)][0, position] for layer in layers]
    )
    if mapping is not None:
        states = torch.stack(
            [mapping(state[None], layer)[0] for state, layer in zip(states, layers, strict=True)]
        )
    placeholder = target.placeholder % target.ids.shape[-1]
    hooks = []
    for layer in sorted(set(into)):
        rows = torch.tensor([i for i, t in enumerate(into) if t == layer])
        hooks.append((goal.hook_name(component, layer), _writer(rows, placeholder, states[rows])))
    sequence = target.ids.expand(len(layers), -1).to(goal.device)
    cached = goal.has_kv_cache if use_cache is None else use_cache and goal.has_kv_cache
    if cached:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        kv = TransformerLensKeyValueCache.init_cache(goal.cfg, goal.device, len(layers))
        mask = torch.ones_like(sequence)  # given, so that no tokenizer is needed to make one
        logits = target_model.run_with_hooks(
            sequence, attention_mask=mask, past_kv_cache=kv, fwd_hooks=hooks
        )
    else:
        logits = target_model.run_with_hooks(sequence, fwd_hooks=hooks)
    new: list[Tensor] = []
    for step in range(max_new_tokens):
        scores = logits[:, -1].float()
        if do_sample:
            probs = torch.softmax(scores / temp, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            token = scores.argmax(-1)
        new.append(token)
        if step + 1 == max_new_tokens:
            break
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        if cached:
            step_mask = torch.ones_like(token[:, None])
            logits = target_model(token[:, None], attention_mask=step_mask, past_kv_cache=kv)
        else:
            logits = target_model.run_with_hooks(sequence, fwd_hooks=hooks)
    return torch.stack(new, dim=1)


def _writer(rows: Tensor, placeholder: int, states: Tensor) -> Callable[..., Tensor]:
    """A hook writing `states` over the placeholder of batch rows `rows`."""

    def write(value: Tensor, hook: Any = None) -> Tensor:
        value = value.clone()
        value[rows, placeholder] = states.to(value.dtype)
        return value

    return write
