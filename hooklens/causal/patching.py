"""Activation patching with a lens readout: where does the answer come back?

For each patched layer ℓ and position p, the clean run's residual at (ℓ, p) is copied
into the corrupted run, and the lens reads `log p(targets) − log p(anti-targets)` at the
answer position at every layer: a `[patched layer, position, read layer]` array.

Cost. The corrupted and clean runs are cached once. Layers below ℓ are the corrupted
run's own (read from its cache, no forward pass), layer ℓ is the patched residual itself,
and only the blocks from ℓ on run again: where the model can start mid-network
(`ModelAdapter.can_start_at_layer`: a HookedTransformer) the patched residuals of all
positions go through `forward(start_at_layer=ℓ)` as one batch (in groups of
`position_batch`, which bounds memory). A TransformerBridge cannot, so there each group
runs the whole model with a patching hook. Only the answer
position's residual is kept per read layer.

Examples:
    >>> clean = model.to_tokens("The capital of France is")
    >>> corrupted = model.to_tokens("The capital of Italy is")
    >>> t, a = model.to_single_token("Paris"), model.to_single_token("Rome")
    >>> sweep = patching_sweep(lens, model, clean, corrupted, targets=[t], anti_targets=[a])
    >>> sweep.values.shape  # [prompt, patched layer, position, read layer]
    (1, 4, 6, 5)
    >>> sweep
    PatchingSweep(prompts=1, patched_layers=4, positions=6, read_layers=5, ...)
    >>> fig = sweep.figure()
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Int
from numpy.typing import NDArray
from torch import Tensor
from tqdm.auto import tqdm

from hooklens.causal.effects import set_log_prob
from hooklens.core import ModelAdapter
from hooklens.errors import InputError
from hooklens.lenses.base import Lens


@dataclass
class PatchingSweep:
    """`values[prompt, patched layer, position, read layer]` (last read row: the output).

    `clean` / `corrupted` are the unpatched runs' values `[prompt, read layer]`.
    `block_forwards` counts sequence × block evaluations used, `model_calls` the calls
    of the model; the `naive_` counts are those of one full forward per (layer,
    position) cell plus the two reference runs.
    """

    values: NDArray[np.floating]
    clean: NDArray[np.floating]
    corrupted: NDArray[np.floating]
    layers: list[int]
    positions: list[int]
    position_labels: list[str]
    model_calls: int
    naive_model_calls: int
    block_forwards: int
    naive_block_forwards: int

    def __repr__(self) -> str:
        prompts, patched, n_positions, read = self.values.shape
        return (
            f"PatchingSweep(prompts={prompts}, patched_layers={patched}, "
            f"positions={n_positions}, read_layers={read}, "
            f"{self.model_calls} model calls / {self.block_forwards} block forwards vs naive "
            f"{self.naive_model_calls} / {self.naive_block_forwards})"
        )

    def recovered(self) -> NDArray[np.floating]:
        """Fraction of the clean − corrupted gap the patch recovers, mean over prompts:
        0 = as corrupted, 1 = as clean (per read layer)."""
        gap = self.clean - self.corrupted  # [prompt, read]
        gap = np.where(np.abs(gap) > 1e-6, gap, np.nan)  # no gap: nothing to recover
        fraction = (self.values - self.corrupted[:, None, None]) / gap[:, None, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            return np.nanmean(fraction, axis=0)

    def figure(self, read_layer: int = -1, recovered: bool = True) -> go.Figure:
        """Heatmap over patched layer × position of what `read_layer` (default: the
        output) reads: the recovered fraction, or the raw log-prob difference."""
        data = self.recovered() if recovered else np.nanmean(self.values, axis=0)
        z = data[..., read_layer]
        n_read = self.values.shape[-1]
        read = "output" if read_layer in (-1, n_read - 1) else f"layer {read_layer % n_read}"
        quantity = "fraction of clean answer recovered" if recovered else "log p diff"
        return go.Figure(
            go.Heatmap(
                z=z,
                x=[
                    f"{p}: {label}"
                    for p, label in zip(self.positions, self.position_labels, strict=True)
                ],
                y=[str(layer) for layer in self.layers],
                colorscale="RdBu",
                zmid=0.0 if not recovered else 0.5,
                colorbar={"title": quantity},
            ),
            layout={
                "title": f"patching clean → corrupted, read at {read}: {quantity}",
                "xaxis_title": "patched position",
                "yaxis_title": "patched layer (resid_pre)",
            },
        )

    def figure_by_read_layer(self, position: int, recovered: bool = True) -> go.Figure:
        """Heatmap over patched layer × read layer for one patched position."""
        data = self.recovered() if recovered else np.nanmean(self.values, axis=0)
        column = self.positions.index(position)
        n_read = self.values.shape[-1]
        return go.Figure(
            go.Heatmap(
                z=data[:, column, :],
                x=[*map(str, range(n_read - 1)), "output"],
                y=[str(layer) for layer in self.layers],
                colorscale="RdBu",
            ),
            layout={
                "title": f"patching position {position}: read at every layer",
                "xaxis_title": "read layer",
                "yaxis_title": "patched layer",
            },
        )


def _readout(
    lens: Lens,
    hidden_by_layer: Sequence[Tensor],
    logits: Tensor,
    targets: Tensor,
    anti: Tensor,
    first_layer: int = 0,
) -> Tensor:
    """`[rows, layer + 1]` log-prob difference from `[rows, d_model]` residuals of layers
    `first_layer`, `first_layer + 1`, ... and `[rows, vocab]` output logits."""
    rows = [
        torch.log_softmax(lens(h, first_layer + i).float(), -1)
        for i, h in enumerate(hidden_by_layer)
    ]
    rows.append(torch.log_softmax(logits.float(), -1))
    log_probs = torch.stack(rows, 1)  # [rows, layer + 1, vocab], where the model computed
    targets, anti = (
        ids.to(log_probs.device).expand(log_probs.shape[0], 1, -1) for ids in (targets, anti)
    )
    return (set_log_prob(log_probs, targets) - set_log_prob(log_probs, anti)).cpu()


def patching_sweep(
    lens: Lens,
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch k"] | Int[Tensor, " batch"] | Sequence[int],
    anti_targets: Int[Tensor, "batch k"] | Int[Tensor, " batch"] | Sequence[int],
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    answer_position: int = -1,
    position_batch: int = 32,
    progress: bool = True,
) -> PatchingSweep:
    """Patch the clean `resid_pre` into the corrupted run at each (layer, position) and
    read the lens at every layer; see the module docstring for the cost.

    `targets` / `anti_targets`: per prompt a token id or a set of ids (`[batch, k]`,
    −1 padding). The lens must read `resid_pre`.
    """
    if lens.component != "resid_pre":
        raise InputError(
            f"the sweep patches resid_pre; pass a lens that reads it, not {lens.component}"
        )
    adapter = ModelAdapter(model)
    clean_tokens, corrupted_tokens = (
        torch.as_tensor(t).reshape(-1, torch.as_tensor(t).shape[-1])
        for t in (clean_tokens, corrupted_tokens)
    )
    if clean_tokens.shape != corrupted_tokens.shape:
        raise InputError(
            f"clean {tuple(clean_tokens.shape)} and corrupted {tuple(corrupted_tokens.shape)} "
            "tokens must have the same shape (patching copies position by position)"
        )
    n_prompts, n_pos = clean_tokens.shape
    targets_t, anti_t = (_id_sets(t, n_prompts) for t in (targets, anti_targets))
    layers = list(range(adapter.n_layers)) if layers is None else list(layers)
    positions = list(range(n_pos)) if positions is None else [p % n_pos for p in positions]
    answer = answer_position % n_pos
    names = adapter.residual_hook_names("resid_pre")
    starts_mid = adapter.can_start_at_layer
    groups = [positions[i : i + position_batch] for i in range(0, len(positions), position_batch)]

    values = np.full((n_prompts, len(layers), len(positions), adapter.n_layers + 1), np.nan)
    clean_values: list[np.ndarray] = []
    corrupted_values: list[np.ndarray] = []
    calls = block_forwards = 0
    bar = tqdm(total=n_prompts * len(layers), desc="patching", disable=not progress)
    for prompt in range(n_prompts):
        with torch.no_grad():
            runs = {}
            for kind, tokens in (("clean", clean_tokens), ("corrupted", corrupted_tokens)):
                logits, cache = model.run_with_cache(
                    tokens[prompt : prompt + 1].to(adapter.device),
                    names_filter=lambda name: name in names,
                )
                resid = [
                    cache[adapter.hook_name("resid_pre", i)][0] for i in range(adapter.n_layers)
                ]
                runs[kind] = (resid, logits[0])
                calls += 1
                block_forwards += adapter.n_layers
            targets_p, anti_p = targets_t[prompt], anti_t[prompt]
            for kind, store in (("clean", clean_values), ("corrupted", corrupted_values)):
                resid, logits = runs[kind]
                store.append(
                    _readout(
                        lens,
                        [h[answer : answer + 1] for h in resid],
                        logits[answer : answer + 1],
                        targets_p,
                        anti_p,
                    )[0].numpy()
                )
            clean_resid = runs["clean"][0]
            corrupted_resid, _ = runs["corrupted"]
            corrupted_read = corrupted_values[-1]
            for li, layer in enumerate(layers):
                for group in groups:
                    n = len(group)
                    patched = corrupted_resid[layer].expand(n, -1, -1).clone()
                    index = torch.arange(n)
                    where = torch.as_tensor(group)
                    patched[index, where] = clean_resid[layer][where]
                    later, logits = _run_from(
                        model, adapter, patched, layer, corrupted_tokens[prompt], answer, starts_mid
                    )
                    calls += 1
                    block_forwards += n * (adapter.n_layers - (layer if starts_mid else 0))
                    hidden = [patched[:, answer], *later]
                    read = _readout(lens, hidden, logits, targets_p, anti_p, layer).numpy()
                    cells = [positions.index(p) for p in group]
                    values[prompt, li, cells, :layer] = corrupted_read[:layer]  # untouched
                    values[prompt, li, cells, layer:] = read
                bar.update(1)
    bar.close()
    naive = n_prompts * (2 + len(layers) * len(positions)) * adapter.n_layers
    tokenizer = adapter.tokenizer
    labels = (
        [tokenizer.decode([int(t)]) for t in clean_tokens[0, positions]]
        if tokenizer is not None
        else [str(p) for p in positions]
    )
    return PatchingSweep(
        values=values,
        clean=np.stack(clean_values),
        corrupted=np.stack(corrupted_values),
        layers=layers,
        positions=positions,
        position_labels=labels,
        model_calls=calls,
        naive_model_calls=n_prompts * (2 + len(layers) * len(positions)),
        block_forwards=block_forwards,
        naive_block_forwards=naive,
    )


def _id_sets(ids: Any, n_prompts: int) -> Tensor:
    """`[prompt, 1, k]` id sets from an int per prompt, a list, or `[prompt, k]`."""
    t = torch.as_tensor(ids, dtype=torch.long)
    if t.ndim == 0:
        t = t.expand(n_prompts)
    if t.ndim == 1:
        t = t[:, None]
    if t.shape[0] != n_prompts:
        raise InputError(f"{t.shape[0]} target sets for {n_prompts} prompts")
    return t[:, None, :]


def _run_from(
    model: Any,
    adapter: ModelAdapter,
    patched: Tensor,
    layer: int,
    tokens: Tensor,
    answer: int,
    starts_mid: bool,
) -> tuple[list[Tensor], Tensor]:
    """Residuals `[n, d_model]` at the answer position entering blocks layer+1.., and the
    output logits there, for a batch of patched `resid_pre` at `layer`."""
    kept: dict[int, Tensor] = {}

    def keep(index: int):
        def hook(value: Tensor, hook: Any = None) -> None:
            kept[index] = value[:, answer].detach().clone()

        return hook

    hooks = [
        (adapter.hook_name("resid_pre", i), keep(i)) for i in range(layer + 1, adapter.n_layers)
    ]
    if starts_mid:
        logits = model.run_with_hooks(patched, start_at_layer=layer, fwd_hooks=hooks)
    else:  # run the whole model; overwrite resid_pre[layer] with the patched batch

        def overwrite(value: Tensor, hook: Any = None) -> Tensor:
            return patched.to(value.dtype)

        repeated = tokens.expand(patched.shape[0], -1).to(adapter.device)
        logits = model.run_with_hooks(
            repeated, fwd_hooks=[(adapter.hook_name("resid_pre", layer), overwrite), *hooks]
        )
    later = [kept[i] for i in range(layer + 1, adapter.n_layers)]
    return later, logits[:, answer]
