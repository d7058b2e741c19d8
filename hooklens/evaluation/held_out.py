"""Per-layer evaluation of lenses on held-out text, side by side.

For each lens and layer: KL(output ‖ lens), cross-entropy of the next token, entropy,
and top-1 agreement with the model, averaged over tokens; cross-entropy also in bits
per UTF-8 byte of the text. Every number comes from one `PredictionTrajectory` pass.

With `marginals` (`hooklens eval --record-logit-stats`), also each layer's marginal
next-token distribution (`hooklens.stats.LogitStats`, as tuned-lens records it) and
KL(output marginal ‖ lens marginal): how biased a lens is towards some tokens over all
the text, whatever the context.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from torch import Tensor

from hooklens.core import VOCAB_CHUNK, ModelAdapter, precision
from hooklens.core.chunked_kl import kl_to_target, target_distribution, weight_chunks
from hooklens.errors import DataError, FewerTokensWarning, warn
from hooklens.evaluation import per_layer
from hooklens.evaluation.per_layer import add_layer_sums
from hooklens.lenses import Lens, TunedLens
from hooklens.plotting.tokens import decode_token
from hooklens.stats import LogitStats, kl_divergence
from hooklens.training.data import load_texts, pack, split_texts
from hooklens.trajectory import PredictionTrajectory, next_token_targets

__all__ = [
    "FewerTokensWarning",
    "LayerMarginals",
    "evaluate_lenses",
    "figure",
    "held_out_chunks",
    "held_out_token_count",
    "layer_transfer",
    "texts_of",
    "transfer_figure",
]


def _bytes_per_token(tokenizer: Any, ids: Tensor) -> int:
    if tokenizer is None:  # a model built from a config: bits per byte are unknown
        return 0
    tokens = tokenizer.convert_ids_to_tokens(ids.reshape(-1).tolist())
    return sum(len(decode_token(token).encode("utf-8", errors="replace")) for token in tokens)


@dataclass
class LayerMarginals:
    """The marginal next-token distribution of the model and of every lens row.

    `output` sees the model's logits; `lenses[name][layer]` the lens's reading of each
    layer (the output row is `output` itself, for every lens).

    Examples:
        >>> from hooklens import LogitLens
        >>> lenses = {"logit lens": LogitLens.from_model(model)}
        >>> marginals = LayerMarginals()
        >>> results = evaluate_lenses(model, lenses, [tokens], marginals=marginals)
        >>> len(marginals.kl_to_output()["logit lens"])  # one KL per row: 4 layers, output
        5
    """

    output: LogitStats = field(default_factory=LogitStats)
    lenses: dict[str, list[LogitStats]] = field(default_factory=dict)

    def kl_to_output(self) -> dict[str, list[float]]:
        """`{lens: [KL(output marginal ‖ layer marginal) per layer, then 0 for the output]}`."""
        target = self.output.marginal_probs
        if target is None:
            return {}
        kls = {}
        for name, layers in self.lenses.items():
            per_layer = [
                kl_divergence(target.log(), layer.marginal_probs.log()).item()
                for layer in layers
                if layer.marginal_probs is not None
            ]
            kls[name] = [*per_layer, 0.0]
        return kls

    def tensors(self) -> dict[str, Tensor]:
        """The marginals as float64 `[vocab]` tensors: `output` and `{lens}/{layer}`."""
        tensors = {}
        if self.output.marginal_probs is not None:
            tensors["output"] = self.output.marginal_probs.cpu().contiguous()
        for name, layers in self.lenses.items():
            for layer, stats in enumerate(layers):
                if stats.marginal_probs is not None:
                    tensors[f"{name}/{layer}"] = stats.marginal_probs.cpu().contiguous()
        return tensors

    def all_reduce_(self) -> None:
        """Sum every statistic over the torch.distributed ranks (`LogitStats.all_reduce_`)."""
        self.output.all_reduce_()
        for layers in self.lenses.values():
            for stats in layers:
                stats.all_reduce_()


def _record_marginals(
    marginals: LayerMarginals, name: str, trajectory: PredictionTrajectory
) -> None:
    # One layer's full [tokens, vocab] log-probs at a time: the batch being added. They
    # are normalised again in float64, so each marginal sums to 1 to float64 rounding.
    layers = marginals.lenses.setdefault(name, [LogitStats() for _ in range(trajectory.num_layers)])
    for layer, stats in enumerate(layers):
        stats.update(trajectory.layer_log_probs(layer))


def evaluate_lenses(
    model: Any,
    lenses: Mapping[str, Lens],
    token_batches: Iterable[Tensor],
    *,
    tokens_requested: int | None = None,
    marginals: LayerMarginals | None = None,
) -> dict[str, Any]:
    """`{"tokens", "bytes", "lenses": {name: {metric: [per layer]}}}`, nats per token.

    Each metric is averaged over the tokens that have it (`per_layer.layer_sums`):
    cross-entropy over the tokens with a next token, the others over every token.

    Args:
        model: the model the lenses read.
        lenses: `{name: lens}`, each evaluated on every batch.
        token_batches: `[batch, pos]` token ids.
        tokens_requested: how many tokens the batches were meant to hold; recorded as
            `"tokens_requested"`, and `FewerTokensWarning` says when they held fewer.
        marginals: filled with each lens row's marginal distribution (`LayerMarginals`);
            each lens's metrics then include `marginal_kl_to_output`.
    """
    sums: dict[str, dict[str, list[np.ndarray]]] = {}
    n_tokens = n_bytes = 0
    # Cache only the residuals the lenses read: a whole cache (attention patterns, MLP
    # activations) is ~2.8 GB per 1,024 SmolLM2 tokens, and it is dropped before the
    # next batch runs, so two never coexist.
    adapter = ModelAdapter(model)
    names = {
        name for lens in lenses.values() for name in adapter.residual_hook_names(lens.component)
    }
    for tokens in token_batches:
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, names_filter=names.__contains__)
        targets = next_token_targets(tokens)
        n_tokens += tokens.numel()
        n_bytes += _bytes_per_token(model.tokenizer, tokens[..., 1:])
        if marginals is not None:
            marginals.output.update(logits)
        for name, lens in lenses.items():
            trajectory = PredictionTrajectory.from_lens_and_cache(
                lens, tokens, cache, logits, targets=targets
            )
            add_layer_sums(sums.setdefault(name, {}), trajectory)
            if marginals is not None:
                _record_marginals(marginals, name, trajectory)
            del trajectory
        del logits, cache
    results: dict[str, Any] = {"tokens": n_tokens}
    if tokens_requested is not None:
        results["tokens_requested"] = tokens_requested
        if n_tokens < tokens_requested:
            warn(
                FewerTokensWarning(
                    f"evaluated {n_tokens} of the {tokens_requested} tokens asked for: "
                    "the batches held no more"
                ),
            )
    results |= {"bytes": n_bytes, "lenses": {}}
    marginal_kls = marginals.kl_to_output() if marginals is not None else {}
    for name, totals in sums.items():
        per_token = {m: total / np.maximum(count, 1) for m, (total, count) in totals.items()}
        per_token["cross_entropy_bits_per_byte"] = (
            totals["cross_entropy"][0] / math.log(2) / n_bytes
            if n_bytes
            else per_token["cross_entropy"] * math.nan
        )
        if name in marginal_kls:
            per_token["marginal_kl_to_output"] = np.array(marginal_kls[name])
        results["lenses"][name] = {
            m: [round(float(v), 6) for v in vs] for m, vs in per_token.items()
        }
    return results


def layer_transfer(
    model: Any,
    lens: TunedLens,
    token_batches: Iterable[Tensor],
    *,
    matmul_dtype: str | torch.dtype = "auto",
) -> np.ndarray:
    """`[lens layer i, residual layer j]`: mean KL(output ‖ translator i applied to layer j).

    The diagonal is the lens as trained; off the diagonal, how well one layer's
    translator reads another layer's residual (how much the layers' bases differ).
    Costs n_layers² unembeddings per token, in `matmul_dtype` ("auto": bf16 where the
    device runs it natively fast, float32 otherwise; `hooklens.precision`).
    """
    adapter = lens.adapter
    names = set(adapter.residual_hook_names(lens.component))
    totals = np.zeros((lens.n_layers, lens.n_layers))
    W_U = lens.unembed.W_U
    w_chunks = weight_chunks(W_U, VOCAB_CHUNK, precision.matmul_dtype(matmul_dtype, W_U.device))
    n_rows = 0
    with torch.no_grad():
        for tokens in token_batches:
            logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            flat = logits.float().reshape(-1, logits.shape[-1])
            target, neg_entropy = target_distribution(flat)
            rows = target.shape[0]
            for j in range(lens.n_layers):
                hidden = cache[adapter.hook_name(lens.component, j)].reshape(rows, -1)
                for i in range(lens.n_layers):
                    translated = lens.transform_hidden(hidden, i)
                    kl = kl_to_target(
                        lens.unembed, translated, target, neg_entropy, w_chunks=w_chunks
                    )
                    totals[i, j] += kl.item() * rows
            n_rows += rows
    return totals / max(n_rows, 1)


def transfer_figure(matrix: np.ndarray, name: str) -> go.Figure:
    """The heatmap of a `layer_transfer` matrix."""
    return go.Figure(
        go.Heatmap(z=matrix, colorscale="Viridis", colorbar={"title": "KL (nats)"}),
        layout={
            "title": f"layer transfer of {name}: KL(output ‖ translator i on layer j)",
            "xaxis_title": "residual of layer j",
            "yaxis_title": "translator of layer i",
        },
    )


def figure(results: Mapping[str, Any], metric: str = "kl_to_output") -> go.Figure:
    """One line per lens of `evaluate_lenses`'s `results`: `metric` against the layer (the
    last point is the output)."""
    return per_layer.figure(
        results["lenses"],
        metric,
        title=f"{per_layer.TITLES.get(metric, metric)} per layer "
        f"({results['tokens']} held-out tokens)",
    )


def texts_of(data: str, text_field: str = "text") -> Iterator[str]:
    """The texts of `data` (a file, a glob, a hub dataset: `load_texts`), streamed, each
    record's `text_field`."""
    return (row[text_field] for row in load_texts(data, streaming=True))


def held_out_token_count(data: str, tokenizer: Any, text_field: str = "text") -> int:
    """The tokens `pack` reads from the held-out split of `data` (each text's, plus a
    separator)."""
    separator = int(tokenizer.eos_token_id is not None)
    return sum(
        len(tokenizer(text, add_special_tokens=False)["input_ids"]) + separator
        for text in split_texts(texts_of(data, text_field), held_out=True)
    )


def held_out_chunks(
    data: str, tokenizer: Any, seq_len: int, text_field: str = "text"
) -> Iterator[Tensor]:
    """The held-out split of `data` packed into `[seq_len]` chunks (`pack`); `DataError`,
    before any work, if it holds none.

    Examples:
        >>> chunks = held_out_chunks("wikipedia-summaries", model.tokenizer, 512)  # doctest: +SKIP
        >>> # here: a local file of 300 short lines, and the examples' tiny model
        >>> from hooklens import LogitLens
        >>> from hooklens.training import batches
        >>> lenses = {"logit lens": LogitLens.from_model(model)}
        >>> chunks = held_out_chunks("texts.jsonl", model.tokenizer, 16)
        >>> results = evaluate_lenses(model, lenses, batches(itertools.islice(chunks, 8), 2))
        >>> results["tokens"]  # 8 chunks of 16
        128
    """
    chunks = pack(split_texts(texts_of(data, text_field), held_out=True), tokenizer, seq_len)
    first = next(chunks, None)
    if first is None:
        found = held_out_token_count(data, tokenizer, text_field)
        raise DataError(
            f"the held-out split of {data} has {found} tokens, fewer than one "
            f"chunk of seq_len={seq_len}; pass a smaller seq_len (hooklens eval: --seq-len) "
            "or more text"
        )
    return itertools.chain([first], chunks)
