"""Does the model use what a lens reads? Causal-basis faithfulness of a lens.

Belrose et al., "Eliciting Latent Predictions from Transformers with the Tuned Lens"
(2023), §4 (causal fidelity). For a lens row ℓ:

1. extract the lens's causal basis v_1 … v_k on fit tokens: the orthonormal residual
   directions whose removal changes the lens's output most
   (`hooklens.causal.subspaces.extract_causal_bases`; energies = that change on the
   fit tokens);
2. on **held-out** tokens, for every direction v_j, in nats, averaged over tokens t:

       lens effect_j  = mean_t KL( lens(h_t) ‖ lens(h̃_t) )
       model effect_j = mean_t KL( model(x)_t ‖ model(x with h → h̃ at row ℓ)_t )

   where h̃ = `remove_subspace(h, v_j, mode)`, applied to the residual the lens reads;
3. Spearman's ρ between the k lens effects and the k model effects: a faithful lens
   ranks directions by how much they matter to it in the order they matter to the model.

Conventions. Rows count as the table in `hooklens.core.residuals` states; at row
n_layers (the final residual) every lens reads exactly what the model does, so there the
two effects agree by construction.
The model's run is ablated with `subspace_ablation` at that same tensor, and the lens
reads the residual as that hook left it (captured in the same run), so lens and model see
one ablated tensor for every mode. "mean" and "resample" ablation take their mean (or
donor tokens) over one forward batch (`batch_size` sequences × positions). Token
sequences are unpadded rows of equal length: padding (given as an attention mask, or
found the way trajectories find it) is refused, since every position counts in the
averages and in the mean or resample ablation, and the model runs unmasked. Nothing holds
`[tokens, vocab]` for more than one batch, nor `[layers, tokens, vocab]` at all: KLs
stream over vocabulary chunks (`hooklens.stats.streaming.vocab_stats`).

`lens_faithfulness`'s docstring has a runnable example (a logit and a tuned lens side
by side); on a real model, `model = hooklens.models.load("smollm2-135m")` and layers
such as `[6, 14]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from numpy.typing import NDArray
from torch import Tensor
from tqdm.auto import tqdm

from hooklens._checks import check_id_range, positive_int, token_id_tensor
from hooklens.causal.faithfulness_result import (
    FaithfulnessResult,
    LayerFaithfulness,
    average_ranks,
    faithfulness_figure,
    faithfulness_table,
    spearman,
)
from hooklens.causal.subspaces import (
    ABLATION_MODES,
    AblationMode,
    CausalBasis,
    extract_causal_bases,
    subspace_ablation,
)
from hooklens.core import ModelAdapter, check_same_model
from hooklens.core.residuals import get_residual, row_hook_names
from hooklens.core.unembed import VOCAB_CHUNK, vocab_chunks
from hooklens.errors import InputError, InputTypeError
from hooklens.lenses.base import Lens
from hooklens.stats.streaming import logsumexp_chunks, vocab_stats
from hooklens.trajectory import checked_attention_mask

CHUNK_SIZE = VOCAB_CHUNK  # the old name of the vocabulary block size here


# --- measurement -------------------------------------------------------------------------


def lens_faithfulness(
    model: Any,
    lens: Lens,
    tokens: Int[Tensor, "batch pos"],
    layers: int | Iterable[int],
    k: int = 8,
    *,
    fit_tokens: Int[Tensor, "fit_batch fit_pos"] | None = None,
    mode: AblationMode = "mean",
    component: str | None = None,
    max_iter: int = 100,
    batch_size: int = 8,
    label: str | None = None,
    progress: bool = True,
    attention_mask: Any = None,
    fit_attention_mask: Any = None,
) -> FaithfulnessResult:
    """Extract `k` causal directions of `lens` at each of `layers` and compare their
    effect on the lens with their effect on the model, on held-out tokens.

    Args:
        model: the HookedTransformer or TransformerBridge the lens was made for.
        lens: any hooklens `Lens` (LogitLens, TunedLens, JacobianLens).
        tokens: `[batch, pos]` token ids. Without `fit_tokens`, the first half of the
            sequences fits the bases and the second half measures the effects.
        layers: lens rows (`0..n_layers`, negative from the end).
        k: directions per layer (at most d_model).
        fit_tokens: token ids to fit the bases on; then every row of `tokens` is held out.
        mode: how a direction is removed: "mean" (default), "zero" or "resample".
        component: the residual the lens reads (default `lens.component`).
        max_iter: L-BFGS iterations per direction of the basis extraction.
        batch_size: sequences per forward pass.
        label: the lens's name in tables and figures (default its class name).
        progress: show progress bars.
        attention_mask: `[batch, pos]` 1 = token, 0 = padding, of `tokens`; default the
            padding the model's tokenizer added, if any (as trajectories find it).
            Padding is refused (`InputError`): every position counts in the effects
            and the ablations. Pass `torch.ones_like(tokens)` if pad-token ids in
            `tokens` are real text.
        fit_attention_mask: the same for `fit_tokens`.

    Examples:
        >>> from hooklens import LogitLens, TunedLens
        >>> tokens = torch.randint(4, 96, (4, 12))  # 2 sequences fit, 2 measure
        >>> logit = lens_faithfulness(model, LogitLens.from_model(model), tokens, [2], k=2)
        >>> tuned = TunedLens.from_model(model)  # load or fit one in practice
        >>> print(faithfulness_table(logit, lens_faithfulness(model, tuned, tokens, [2], k=2)))
        | layer | lens | k | Spearman ρ | mean lens KL | mean model KL |
        |---:|:---|---:|---:|---:|---:|
        | 2 | LogitLens | 2 | ... |
        | 2 | TunedLens | 2 | ... |
    """
    adapter = _checked_pair(model, lens)
    component = lens.resolve_component(component)
    rows = _rows(lens, layers)
    k = positive_int(k, "k")
    if k > adapter.d_model:
        raise InputError(
            f"k={k} directions asked for, but the residual stream has only "
            f"d_model={adapter.d_model} dimensions: pass k ≤ {adapter.d_model}"
        )
    mode = _checked_mode(mode)
    batch_size = positive_int(batch_size, "batch_size")
    ids = _token_rows(tokens, "tokens", adapter, attention_mask)
    if fit_tokens is None:
        if ids.shape[0] < 2:
            raise InputError(
                f"tokens hold {ids.shape[0]} sequence: half of the sequences fit the causal "
                "bases and the other half measure them, so pass at least 2 sequences "
                "([batch ≥ 2, pos]), or other text as fit_tokens=... to measure on all of them"
            )
        fit, held_out = ids[: ids.shape[0] // 2], ids[ids.shape[0] // 2 :]
    else:
        fit = _token_rows(fit_tokens, "fit_tokens", adapter, fit_attention_mask)
        held_out = ids

    hiddens = _residual_rows(model, adapter, fit, rows, component, batch_size)
    bases = extract_causal_bases(
        lens, hiddens, k, mode=mode, layers=rows, max_iter=max_iter, progress=progress
    )
    directions = {basis.layer: basis for basis in bases}
    del hiddens
    effects = _effects(
        model,
        adapter,
        lens,
        held_out,
        {row: directions[row].vectors for row in rows},
        mode=mode,
        component=component,
        batch_size=batch_size,
        progress=progress,
    )
    return FaithfulnessResult(
        lens=label or type(lens).__name__,
        model=adapter.model_name,
        layers=tuple(_layer_result(directions[row], *effects[row]) for row in rows),
        mode=mode,
        component=component,
        fit_tokens=int(fit.numel()),
        eval_tokens=int(held_out.numel()),
    )


def direction_effects(
    model: Any,
    lens: Lens,
    tokens: Int[Tensor, "batch pos"],
    layer: int,
    directions: Float[Tensor, "d_model k"],
    *,
    mode: AblationMode = "mean",
    component: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
    attention_mask: Any = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """`(lens_effects, model_effects)`, each `[k]` in nats: the mean KL over `tokens` that
    removing each column of `directions` (one at a time) at row `layer` causes in the
    lens's readout and in the model's output. Any directions: a probe's, an SAE
    feature's, a causal basis's (that is what `lens_faithfulness` passes). Padded
    `tokens` are refused, as in `lens_faithfulness` (`attention_mask` likewise).

    Examples:
        >>> lens_kl, model_kl = direction_effects(model, lens, tokens, 2, torch.eye(32)[:, :3])
        >>> lens_kl.shape, model_kl.shape  # one mean KL per direction
        ((3,), (3,))
    """
    adapter = _checked_pair(model, lens)
    component = lens.resolve_component(component)
    (row,) = _rows(lens, [layer])
    vectors = _checked_directions(directions, adapter.d_model)
    effects = _effects(
        model,
        adapter,
        lens,
        _token_rows(tokens, "tokens", adapter, attention_mask),
        {row: vectors},
        mode=_checked_mode(mode),
        component=component,
        batch_size=positive_int(batch_size, "batch_size"),
        progress=progress,
    )
    return effects[row]


def _layer_result(
    basis: CausalBasis, lens_effects: NDArray[np.float64], model_effects: NDArray[np.float64]
) -> LayerFaithfulness:
    return LayerFaithfulness(
        layer=basis.layer,
        energies=basis.energies.detach().double().cpu().numpy(),
        lens_effects=lens_effects,
        model_effects=model_effects,
        vectors=basis.vectors.detach().cpu(),
    )


def _effects(
    model: Any,
    adapter: ModelAdapter,
    lens: Lens,
    tokens: Int[Tensor, "batch pos"],
    directions: dict[int, Float[Tensor, "d_model k"]],
    *,
    mode: AblationMode,
    component: str,
    batch_size: int,
    progress: bool,
) -> dict[int, tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """Sum each direction's per-token KLs over all batches, then divide by the count.

    One clean run per batch serves every row; each (row, direction) then costs one
    ablated run, which also captures the ablated residual for the lens to read.
    """
    lens_sums = {row: np.zeros(vectors.shape[1]) for row, vectors in directions.items()}
    model_sums = {row: np.zeros(vectors.shape[1]) for row, vectors in directions.items()}
    n_directions = sum(vectors.shape[1] for vectors in directions.values())
    batches = list(tokens.split(batch_size))
    bar = tqdm(
        total=len(batches) * n_directions,
        desc="ablating directions",
        unit="run",
        disable=not progress,
    )
    clean_names = {name for row in directions for name in row_hook_names(adapter, row, component)}
    with torch.no_grad(), bar:
        for batch in batches:
            batch = batch.to(adapter.device)
            logits, cache = model.run_with_cache(batch, names_filter=clean_names.__contains__)
            clean_output = _Readout(logits.reshape(-1, logits.shape[-1]))
            for row, vectors in directions.items():
                hidden = get_residual(cache, row, component, adapter)
                clean_lens = _LensReadout(lens, hidden, row)
                for j in range(vectors.shape[1]):
                    direction = vectors[:, j : j + 1].to(hidden.device, hidden.dtype)
                    hook = subspace_ablation(model, direction, row, mode=mode, component=component)
                    names = {hook[0], *row_hook_names(adapter, row, component)}
                    with model.hooks(fwd_hooks=[hook]):
                        ablated_logits, ablated_cache = model.run_with_cache(
                            batch, names_filter=names.__contains__
                        )
                    ablated = get_residual(ablated_cache, row, component, adapter)
                    lens_sums[row][j] += clean_lens.kl_to(ablated).double().sum().item()
                    ablated_logits = ablated_logits.reshape(-1, ablated_logits.shape[-1])
                    model_sums[row][j] += clean_output.kl_to(ablated_logits).double().sum().item()
                    bar.update()
            del logits, cache, clean_output
    count = tokens.numel()
    return {row: (lens_sums[row] / count, model_sums[row] / count) for row in directions}


class _Readout:
    """A fixed reference distribution (the model's clean output, as logits `[rows,
    vocab]`) to measure KL(reference ‖ other) against, streamed over vocabulary chunks."""

    def __init__(self, logits: Float[Tensor, "rows vocab"], chunk_size: int = VOCAB_CHUNK):
        self.logits = logits
        self.chunk_size = chunk_size
        self.logsumexp = logsumexp_chunks(
            logits[:, vocab].float() for vocab in vocab_chunks(logits.shape[-1], chunk_size)
        )

    def reference(self, vocab: slice) -> Float[Tensor, "rows chunk"]:
        return self.logits[:, vocab].float() - self.logsumexp[:, None]

    def kl_to(self, other: Float[Tensor, "rows vocab"]) -> Float[Tensor, " rows"]:
        """KL(self ‖ other) per row; `other`'s logits are shifted in place (discard it)."""
        chunks = (
            (vocab, other[:, vocab].float())
            for vocab in vocab_chunks(other.shape[-1], self.chunk_size)
        )
        return _reference_kl(chunks, self.reference)


class _LensReadout:
    """The lens's clean readout of one row's residual, never whole as `[rows, vocab]`:
    each chunk of its logits is recomputed when a KL needs it."""

    def __init__(self, lens: Lens, hidden: Float[Tensor, "... d_model"], row: int):
        self.lens, self.row = lens, row
        self.unembed = lens.unembed
        self.normed = self.unembed.normalize(self._translated(hidden))
        self.logsumexp = logsumexp_chunks(
            self._logits(vocab) for vocab in vocab_chunks(self.unembed.d_vocab, VOCAB_CHUNK)
        )

    def _translated(self, hidden: Tensor) -> Float[Tensor, "rows d_model"]:
        return self.lens.transform_hidden(hidden.reshape(-1, hidden.shape[-1]), self.row)

    def _logits(self, vocab: slice) -> Float[Tensor, "rows chunk"]:
        return self.unembed.logits_of_normalized(self.normed, vocab).float()

    def reference(self, vocab: slice) -> Float[Tensor, "rows chunk"]:
        return self._logits(vocab) - self.logsumexp[:, None]

    def kl_to(self, hidden: Float[Tensor, "... d_model"]) -> Float[Tensor, " rows"]:
        """KL(clean readout ‖ readout of `hidden`) per token."""
        translated = self._translated(hidden)
        chunks = (
            (vocab, logits.float())
            for vocab, logits in self.unembed.logit_chunks(translated, VOCAB_CHUNK)
        )
        return _reference_kl(chunks, self.reference)


def _reference_kl(
    chunks: Iterable[tuple[slice, Float[Tensor, "rows chunk"]]],
    reference: Callable[[slice], Float[Tensor, "rows chunk"]],
) -> Float[Tensor, " rows"]:
    stats = vocab_stats(chunks, k=1, reference=reference)
    assert stats.reference_kl is not None  # vocab_stats sets it when given a reference
    return stats.reference_kl


def _residual_rows(
    model: Any,
    adapter: ModelAdapter,
    tokens: Int[Tensor, "batch pos"],
    rows: Sequence[int],
    component: str,
    batch_size: int,
) -> list[Float[Tensor, "batch pos d_model"]]:
    """One `[batch, pos, d]` tensor per lens row, as `extract_causal_bases` takes them.

    Only `rows` are run and cached; `extract_causal_bases(..., layers=rows)` reads no
    other row, so every other entry is the first requested row again (no copy), not 31
    residuals of SmolLM2 when 3 are asked for.
    """
    names = {name for row in rows for name in row_hook_names(adapter, row, component)}
    # A model that can stop after the deepest block needed runs no head and no logits.
    deepest = max(rows)
    stop = (
        {"stop_at_layer": deepest + 1}
        if adapter.can_stop_at_layer and deepest < adapter.n_layers
        else {}
    )
    parts: dict[int, list[Tensor]] = {row: [] for row in rows}
    with torch.no_grad():
        for batch in tokens.split(batch_size):
            _, cache = model.run_with_cache(
                batch.to(adapter.device), names_filter=names.__contains__, **stop
            )
            for row in rows:
                parts[row].append(get_residual(cache, row, component, adapter))
    fitted = {row: torch.cat(part) for row, part in parts.items()}
    return [fitted.get(row, fitted[rows[0]]) for row in range(adapter.n_layers + 1)]


# --- checks ------------------------------------------------------------------------------


def _checked_pair(model: Any, lens: Lens) -> ModelAdapter:
    if not isinstance(lens, Lens):
        raise InputTypeError(f"lens must be a hooklens Lens, got {type(lens).__name__}")
    adapter = ModelAdapter(model)
    if lens.adapter.model is not model:
        check_same_model(lens.adapter, model, "this model")
    return adapter


def _rows(lens: Lens, layers: int | Iterable[int]) -> list[int]:
    if isinstance(layers, int) or (isinstance(layers, Tensor) and layers.ndim == 0):
        layers = [layers]  # type: ignore[list-item]
    rows = list(dict.fromkeys(lens.layer_index(layer) for layer in layers))
    if not rows:
        raise InputError("layers is empty: pass the lens rows to measure, e.g. layers=[6, 14]")
    return rows


def _checked_mode(mode: str) -> AblationMode:
    if mode not in ABLATION_MODES:
        raise InputError(f"mode must be one of {', '.join(ABLATION_MODES)}; got {mode!r}")
    return mode  # type: ignore[return-value]  # checked just above


def _checked_directions(directions: Tensor, d_model: int) -> Float[Tensor, "d_model k"]:
    if not isinstance(directions, Tensor) or not directions.is_floating_point():
        raise InputTypeError(
            f"directions must be a floating-point tensor [d_model, k], got "
            f"{getattr(directions, 'dtype', type(directions).__name__)}"
        )
    vectors = directions[:, None] if directions.ndim == 1 else directions
    if vectors.ndim != 2 or vectors.shape[0] != d_model or vectors.shape[1] == 0:
        raise InputError(
            f"directions must be [d_model={d_model}, k ≥ 1] (one direction per column) or "
            f"[d_model], got {tuple(directions.shape)}"
        )
    return vectors


def _token_rows(
    tokens: Any, name: str, adapter: ModelAdapter, attention_mask: Any = None
) -> Int[Tensor, "batch pos"]:
    """`tokens` as `[batch, pos]` ids the model can read, without padding."""
    ids = token_id_tensor(tokens, name)
    given = ids  # the mask, if any, is shaped like what the caller passed
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.numel() == 0:
        raise InputError(
            f"{name} must be [batch, pos] token ids with at least one token, got {tuple(ids.shape)}"
        )
    check_id_range(ids, name, int(adapter.cfg.d_vocab), allow_missing=False)
    n_ctx = getattr(adapter.cfg, "n_ctx", None)
    if n_ctx and ids.shape[-1] > n_ctx:
        raise InputError(
            f"{name} hold {ids.shape[-1]} positions, more than the model's context of "
            f"n_ctx={n_ctx}: cut them ({name}[:, :{n_ctx}])"
        )
    _refuse_padding(given, name, adapter, attention_mask)
    return ids


def _refuse_padding(
    ids: Int[Tensor, "*batch pos"], name: str, adapter: ModelAdapter, attention_mask: Any
) -> None:
    """Padding would count as text: in the mean KLs, in the mean or resample ablation
    (pooled over the batch's positions), and in the unmasked model runs. Found as
    trajectories find it (`checked_attention_mask`), and refused rather than dropped:
    left out of the averages, it would still be in the ablations' pool."""
    mask_name = "attention_mask" if name == "tokens" else "fit_attention_mask"
    mask = checked_attention_mask(ids, attention_mask, adapter, name=mask_name, ids_name=name)
    if mask is None or bool(mask.all()):
        return
    mask = mask.reshape(-1, mask.shape[-1])
    lengths = mask.sum(-1)
    shortest = int(lengths.min())
    left = bool(mask[:, -1].all()) and not bool(mask[:, 0].all())
    cut = f"{name}[:, -{shortest}:]" if left else f"{name}[:, :{shortest}]"
    found = (
        f"{mask_name} marks {int((~mask).sum())} padded position(s)"
        if attention_mask is not None
        else f"{int((lengths < mask.shape[-1]).sum())} of its {mask.shape[0]} sequences have "
        f"padding (the tokenizer's pad token, id {adapter.tokenizer.pad_token_id}, on the "
        f"{'left' if left else 'right'})"
    )
    advice = "Pass sequences of one length without padding"
    if shortest:
        advice += f" (e.g. every row cut to the shortest, {cut})"
    advice += "."
    if attention_mask is None:
        advice += (
            f" If those pad-token ids are real text, pass {mask_name}=torch.ones_like({name})."
        )
    raise InputError(
        f"{name} are padded: {found}. The effects are averaged over every position and "
        f"the model runs without an attention mask, so padding would count as text. {advice}"
    )


__all__ = [
    "FaithfulnessResult",
    "LayerFaithfulness",
    "average_ranks",
    "direction_effects",
    "faithfulness_figure",
    "faithfulness_table",
    "lens_faithfulness",
    "spearman",
]
