"""A map from one model's hidden states to another's: `h ↦ A h + b` per source layer,
fitted by least squares on states of the same tokens.

A Patchscope that patches a model's states into another model (a larger one of the same
family, say) reads them better after such a map: the target's residual stream has its
own basis and scale. `fit_state_map` runs both models on the same token batches (one
tokenizer), pairs the source's states at layer ℓ with the target's at the layer they
will be written to (ℓ itself, or one fixed `target_layer`), and solves
`y ≈ A x + b` per source layer from streamed float64 moments (`core.least_squares`).
The result is a `Mapping` for `patchscope(..., mapping=...)`.

The first positions are left out of the fit by default: a sequence's first state is an
attention sink whose norm is far from the others', and least squares would spend itself
on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from hooklens.core import ModelAdapter, normalize_component
from hooklens.core.least_squares import AffineMoments
from hooklens.errors import InputError


class AffineStateMap:
    """`h ↦ A[ℓ] h + b[ℓ]` for each source layer ℓ: a Patchscope `mapping`.

    Examples:
        >>> from hooklens.causal import fit_state_map, patchscope
        >>> batches = [torch.randint(0, 96, (4, 12)) for _ in range(4)]
        >>> state_map = fit_state_map(model, model, batches, progress=False)
        >>> state_map  # a model mapped onto itself: A ≈ I, b ≈ 0
        AffineStateMap(layers=[0, 1, 2, 3], d_source=32, d_target=32, target_layer=None, rows=176)
        >>> scope = patchscope(model, tokens, mapping=state_map, progress=False)
    """

    def __init__(
        self,
        weights: dict[int, Float[Tensor, "d_target d_source"]],
        biases: dict[int, Float[Tensor, " d_target"]],
        *,
        target_layer: int | None = None,
        rows: int = 0,
    ):
        if weights.keys() != biases.keys() or not weights:
            raise InputError("an AffineStateMap needs a weight and a bias for each layer")
        self.weights, self.biases = weights, biases
        self.target_layer, self.rows = target_layer, rows

    def __repr__(self) -> str:
        d_target, d_source = next(iter(self.weights.values())).shape
        return (
            f"AffineStateMap(layers={sorted(self.weights)}, d_source={d_source}, "
            f"d_target={d_target}, target_layer={self.target_layer}, rows={self.rows})"
        )

    def __call__(
        self, states: Float[Tensor, "n d_source"], layer: int
    ) -> Float[Tensor, "n d_target"]:
        if layer not in self.weights:
            raise InputError(
                f"this map was fitted for source layers {sorted(self.weights)}, not {layer}: "
                "fit it with layers= including it"
            )
        weight = self.weights[layer].to(states.device, states.dtype)
        bias = self.biases[layer].to(states.device, states.dtype)
        return states @ weight.T + bias


def fit_state_map(
    source_model: Any,
    target_model: Any,
    token_batches: Iterable[Int[Tensor, "batch pos"]],
    *,
    layers: Sequence[int] | None = None,
    target_layer: int | None = None,
    component: str = "resid_pre",
    skip_first_positions: int = 1,
    alpha: float = 1e-5,
    progress: bool = True,
) -> AffineStateMap:
    """Fit `h ↦ A h + b` per source layer from the source's states to the target's, on
    the same tokens (the models share a tokenizer).

    Args:
        source_model: a HookedTransformer or TransformerBridge.
        target_model: another (or the same), of any width, with the same tokenizer.
        token_batches: `[batch, pos]` token ids both models read.
        layers: the source layers to map (default: all).
        target_layer: the target layer every state is written to; default each source
            layer's own (the target needs at least as many blocks then).
        component: the residual read and written, as in `patchscope_log_probs`.
        skip_first_positions: positions at the start of each sequence left out.
        alpha: ridge strength, relative to the source states' variance (`AffineMoments`).
        progress: show a progress bar over batches.
    """
    source, goal = ModelAdapter(source_model), ModelAdapter(target_model)
    component = normalize_component(component)
    layers = list(range(source.n_layers)) if layers is None else [int(x) for x in layers]
    into = {layer: layer if target_layer is None else target_layer for layer in layers}
    for layer, goal_layer in into.items():
        source.hook_name(component, layer)  # refuses a layer the model does not have
        goal.hook_name(component, goal_layer)
    source_names = {source.hook_name(component, layer) for layer in layers}
    goal_names = {goal.hook_name(component, layer) for layer in into.values()}
    moments = {
        layer: AffineMoments(source.d_model, goal.d_model, source.device) for layer in layers
    }
    with torch.no_grad():
        for tokens in tqdm(token_batches, desc="state map", unit="batch", disable=not progress):
            if tokens.shape[-1] <= skip_first_positions:
                raise InputError(
                    f"sequences of {tokens.shape[-1]} tokens leave nothing to fit after "
                    f"skip_first_positions={skip_first_positions}: use longer sequences"
                )
            _, from_cache = source_model.run_with_cache(
                tokens.to(source.device), names_filter=source_names.__contains__
            )
            _, into_cache = target_model.run_with_cache(
                tokens.to(goal.device), names_filter=goal_names.__contains__
            )
            for layer, goal_layer in into.items():
                x = from_cache[source.hook_name(component, layer)][:, skip_first_positions:]
                y = into_cache[goal.hook_name(component, goal_layer)][:, skip_first_positions:]
                moments[layer].update(
                    x.reshape(-1, source.d_model), y.reshape(-1, goal.d_model).to(x.device)
                )
    for each in moments.values():
        each.all_reduce()
    solved = {layer: each.solve(alpha) for layer, each in moments.items()}
    return AffineStateMap(
        {layer: weight for layer, (weight, _) in solved.items()},
        {layer: bias for layer, (_, bias) in solved.items()},
        target_layer=target_layer,
        rows=next(iter(moments.values())).count,
    )
