"""Ready-made TransformerLens hooks for causal experiments: ablation and patching.

Each function returns a `(hook_name, hook_fn)` pair, the form `fwd_hooks=[...]`,
`model.hooks(...)` and `model.run_with_hooks(...)` take, for `HookedTransformer` and
`TransformerBridge` alike. Components are spelled as in `ModelAdapter.activation_hook_name`:
"head" (one attention head's `hook_z`), "attn", "mlp", or a residual ("resid_pre",
"resid_mid", "resid_post"). `positions` (an int, a list or a slice) limits the
intervention to those sequence positions; by default it covers all of them.

Examples:
    >>> from hooklens import LogitLens, PredictionTrajectory, models
    >>> from hooklens.causal.interventions import zero_ablation
    >>> model = models.load("smollm2-135m")                          # doctest: +SKIP
    >>> # here: the examples' tiny 4-layer model instead
    >>> lens = LogitLens.from_model(model)
    >>> ablated = PredictionTrajectory.from_lens_and_model(
    ...     lens, model, "The capital of France is",
    ...     fwd_hooks=[zero_ablation(model, "mlp", 2)])
    >>> ablated
    PredictionTrajectory(layers=4, pos=6, lens=LogitLens(...), component='resid_pre')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from hooklens.core import ModelAdapter, check_same_model
from hooklens.errors import InputError, LayerIndexError, MissingHookError

Hook = tuple[str, Callable[..., Tensor]]
Positions = int | Sequence[int] | slice | None


def _index(component: str, positions: Positions, head: int | None) -> tuple[Any, ...]:
    """Index into `[batch, pos, ...]` (or `[batch, pos, head, d_head]` for heads)."""
    if component == "head":
        if head is None:
            raise InputError('component "head" needs head=<index of the attention head>')
    elif head is not None:
        raise InputError(f'head= applies to component "head" only, not {component!r}')
    selected: Any = positions
    if positions is None:
        selected = slice(None)
    elif isinstance(positions, Sequence):
        selected = torch.as_tensor(list(positions), dtype=torch.long)
    index: tuple[Any, ...] = (slice(None), selected)
    return (*index, head) if component == "head" else index


def _checked(model: Any, component: str, layer: int, head: int | None) -> str:
    adapter = ModelAdapter(model)
    name = adapter.activation_hook_name(component, layer)
    if head is not None:
        n_heads = adapter.cfg.n_heads
        if not 0 <= head < n_heads:
            raise LayerIndexError(
                f"head {head} is out of range: the model has heads 0..{n_heads - 1}"
            )
    return name


def replace_with(
    model: Any,
    component: str,
    layer: int,
    values: Tensor | Callable[[Tensor], Tensor],
    *,
    head: int | None = None,
    positions: Positions = None,
) -> Hook:
    """Set the selected activations to `values` (a tensor that broadcasts to the
    selection, or a function of the hooked activation that returns one)."""
    name = _checked(model, component, layer, head)
    index = _index(component, positions, head)

    def hook(activation: Tensor, hook: Any = None) -> Tensor:
        new = values(activation) if callable(values) else values
        activation = activation.clone()
        activation[index] = new.to(activation.dtype).to(activation.device)
        return activation

    return name, hook


def zero_ablation(
    model: Any, component: str, layer: int, *, head: int | None = None, positions: Positions = None
) -> Hook:
    """Zero the selected activations."""
    return replace_with(model, component, layer, torch.zeros(()), head=head, positions=positions)


def mean_ablation(
    model: Any,
    component: str,
    layer: int,
    reference: Any,
    *,
    head: int | None = None,
    positions: Positions = None,
    per_position: bool = False,
) -> Hook:
    """Replace the selected activations by their mean over a reference run.

    `reference` is an `ActivationCache` (or dict) holding this hook's activation for a
    batch of reference prompts. The mean is over the batch and, unless `per_position`,
    over positions too (then the reference may have any length).
    """
    name = _checked(model, component, layer, head)
    reference_activation = _from_cache(model, reference, name)
    mean = reference_activation.float().mean(0)  # [pos, ...]
    if not per_position:
        mean = mean.mean(0)
    index = _index(component, positions, head)
    if component == "head":
        mean = mean[..., head, :]
    if per_position:
        mean = mean[index[1]]

    def values(activation: Tensor) -> Tensor:
        return mean

    return replace_with(model, component, layer, values, head=head, positions=positions)


def patch(
    model: Any,
    component: str,
    layer: int,
    source: Any,
    *,
    head: int | None = None,
    positions: Positions = None,
) -> Hook:
    """Copy the selected activations from another run's cache (`source`, same shape):
    activation patching, e.g. clean → corrupted."""
    name = _checked(model, component, layer, head)
    source_activation = _from_cache(model, source, name)
    index = _index(component, positions, head)

    def values(activation: Tensor) -> Tensor:
        if source_activation.shape != activation.shape:
            raise InputError(
                f"{name}: the source run's activation is {tuple(source_activation.shape)}, "
                f"this run's {tuple(activation.shape)}; patch between runs of the same shape"
            )
        return source_activation[index]

    return replace_with(model, component, layer, values, head=head, positions=positions)


def resample_ablation(
    model: Any,
    component: str,
    layer: int,
    source: Any,
    *,
    head: int | None = None,
    positions: Positions = None,
    seed: int = 0,
) -> Hook:
    """Replace each prompt's selected activations by those of a prompt drawn at random
    (with replacement, seeded) from another batch's cache `source` of the same length."""
    name = _checked(model, component, layer, head)
    source_activation = _from_cache(model, source, name)
    index = _index(component, positions, head)
    generator = torch.Generator().manual_seed(seed)

    def values(activation: Tensor) -> Tensor:
        if source_activation.shape[1:] != activation.shape[1:]:
            raise InputError(
                f"{name}: source prompts are {tuple(source_activation.shape[1:])} per "
                f"prompt, this run's {tuple(activation.shape[1:])}; use prompts of one length"
            )
        draw = torch.randint(
            0, source_activation.shape[0], (activation.shape[0],), generator=generator
        )
        return source_activation[draw][index]

    return replace_with(model, component, layer, values, head=head, positions=positions)


def _from_cache(model: Any, cache: Any, name: str) -> Tensor:
    # Patching in another model's activations would run without complaint if the
    # shapes agree: refuse a cache whose model is not this one (or a copy of it).
    check_same_model(ModelAdapter(model), getattr(cache, "model", None), "the source cache")
    try:
        activation = cache[name]
    except KeyError:
        raise MissingHookError(
            f"the cache has no {name!r}: run the source prompts with run_with_cache "
            f"(names_filter must keep {name!r})"
        ) from None
    if activation.ndim < 3:
        raise InputError(
            f"{name} is {tuple(activation.shape)} in the cache; expected a batch axis "
            "([batch, pos, ...]): do not remove_batch_dim() it"
        )
    return activation.detach()
