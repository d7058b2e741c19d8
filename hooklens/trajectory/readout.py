"""The streaming passes of a trajectory: `read`, the one pass that computes every
single-trajectory statistic, and `read_pair`, the one pass over two trajectories.

Both loop over row blocks × vocabulary chunks × rows (layers) and ask a `RowSource`
for one `[ROW_BLOCK, VOCAB_CHUNK]` float32 tile at a time, so `[layer, pos, vocab]`
is never materialised. Their results are the kernel's own dataclasses
(`hooklens.stats.streaming.VocabStats`, `PairStats`) with every tensor stacked to
`[layer + 1, rows, ...]` field by field (`stack_rows`): a field added to the kernel
reaches the `Readout` with no code here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import torch
from torch import Tensor

from hooklens.core.unembed import vocab_chunks
from hooklens.errors import NonFiniteActivationError
from hooklens.stats.streaming import (
    PairStats,
    ReferenceTile,
    VocabAccumulator,
    VocabStats,
    logsumexp_chunks,
    pair_stats,
)
from hooklens.trajectory.rows import Block, RowSource

# Tiles of [ROW_BLOCK, VOCAB_CHUNK] float32 (4 MiB) stay in cache for the ~10
# elementwise passes per tile, and are still big enough for an efficient matmul: half
# the `core.unembed.VOCAB_CHUNK` blocks that code with one pass per block uses.
ROW_BLOCK = 256
VOCAB_CHUNK = 4096


def stack_rows(per_layer: list[list[Any]]) -> Any:
    """`[layer][row block]` results → one, each tensor `[layer + 1, rows, ...]` on the
    CPU. Dataclasses are stacked field by field (None stays None)."""
    first: Any = per_layer[0][0]
    if first is None:
        return first
    if is_dataclass(first) and not isinstance(first, type):
        return replace(
            first,
            **{
                f.name: stack_rows([[getattr(b, f.name) for b in blocks] for blocks in per_layer])
                for f in fields(first)
            },
        )
    return torch.stack([torch.cat(blocks) for blocks in per_layer]).cpu()


def select_rows(value: Any, rows: Tensor) -> Any:
    """`value` (a tensor `[layer + 1, rows, ...]`, or a dataclass of them) at `rows`."""
    if value is None:
        return value
    if is_dataclass(value) and not isinstance(value, type):
        return replace(
            value, **{f.name: select_rows(getattr(value, f.name), rows) for f in fields(value)}
        )
    return value[:, rows]


@dataclass
class Readout:
    """Per-row results of the construction pass; every tensor is `[layer + 1, rows, ...]`.

    `stats` holds every field of the kernel's `VocabStats` (log-sum-exp, entropy,
    forward KL as `reference_kl`, top-k, target rank); the target log-probs are NaN
    where a position has no target.
    """

    stats: VocabStats
    target_log_prob: Tensor | None = None
    anti_target_log_prob: Tensor | None = None

    @property
    def topk_ids(self) -> Tensor:
        return self.stats.topk_ids

    @property
    def topk_log_probs(self) -> Tensor:
        return self.stats.topk_logits - self.stats.logsumexp[..., None]

    def select(self, rows: Tensor) -> Readout:
        """The same readout at flat `rows` only (no recomputation)."""
        return select_rows(self, rows)


def tile_chunks(vocab_size: int) -> list[slice]:
    """The vocabulary in tile-wide blocks: hooklens's one chunker at this pass's width."""
    return list(vocab_chunks(vocab_size, VOCAB_CHUNK))


def row_blocks(n_rows: int) -> list[slice]:
    return [slice(r, min(r + ROW_BLOCK, n_rows)) for r in range(0, n_rows, ROW_BLOCK)]


@torch.no_grad()
def read(
    source: RowSource,
    n_rows: int,
    targets: Tensor | None,
    anti_targets: Tensor | None,
    topk: int,
) -> Readout:
    """The construction pass: row blocks × vocabulary chunks × layers.

    Layers are the innermost loop so each chunk of the output distribution (the
    reference of every forward KL) is exponentiated once, not once per layer.
    `targets`/`anti_targets` are `[..., pos]` ids (negative = none).
    """
    n_layers = source.n_layers
    targets = None if targets is None else targets.reshape(-1).to(source.device)
    anti = None if anti_targets is None else anti_targets.reshape(-1).to(source.device)
    results: list[list[VocabStats]] = [[] for _ in range(n_layers + 1)]
    target_logits: list[list[Tensor]] = [[] for _ in range(n_layers + 1)]
    anti_logits: list[list[Tensor]] = [[] for _ in range(n_layers + 1)]
    chunks = tile_chunks(source.vocab_size)
    for rows in row_blocks(n_rows):
        blocks = [source.block(layer, rows) for layer in range(n_layers + 1)]
        output = blocks[-1]
        row_targets = None if targets is None else targets[rows]
        accumulators = []
        for layer, block in enumerate(blocks):
            zt = None
            if row_targets is not None:
                zt = _token_logits(source, block, row_targets)
                target_logits[layer].append(zt)
            if anti is not None:
                anti_logits[layer].append(_token_logits(source, block, anti[rows]))
            accumulators.append(VocabAccumulator(topk, row_targets, zt))
        out_lse = logsumexp_chunks(source.tile(output, v) for v in chunks)
        if not bool(torch.isfinite(out_lse).all()):
            raise NonFiniteActivationError(
                "model_logits hold NaN or +inf, or a position where every logit is -inf"
            )
        for vocab in chunks:
            out = source.tile(output, vocab)
            reference = ReferenceTile.from_log_probs(out - out_lse[:, None])
            for layer, block in enumerate(blocks):
                logits = out if block is output else source.tile(block, vocab)
                accumulators[layer].update(vocab, logits, reference)
        for layer, accumulator in enumerate(accumulators):
            results[layer].append(accumulator.finish())
    stats = stack_rows(results)
    return Readout(
        stats,
        _log_prob_of(target_logits, targets, stats.logsumexp),
        _log_prob_of(anti_logits, anti, stats.logsumexp),
    )


def _token_logits(source: RowSource, block: Block, ids: Tensor) -> Tensor:
    """The logit of `ids` (one per row; negative = none, read as token 0)."""
    return source.token_logits(block, ids.clamp_min(0))


def _log_prob_of(logits: list[list[Tensor]], ids: Tensor | None, lse: Tensor) -> Tensor | None:
    if ids is None:
        return None
    values = stack_rows(logits) - lse
    return torch.where(ids.cpu() >= 0, values, torch.full_like(values, math.nan))


@torch.no_grad()
def read_pair(
    a: RowSource,
    b: RowSource,
    n_rows: int,
    logsumexp_a: Tensor,
    logsumexp_b: Tensor,
    delta_k: int,
) -> PairStats:
    """One pass over both trajectories' rows: row blocks × layers × vocabulary chunks.

    `logsumexp_a`/`_b` are `[layer + 1, rows]`, from each one's `read`. With `delta_k`
    > 0, each row also keeps its `delta_k` largest changes of probability.
    """
    device = a.device
    lse_a, lse_b = logsumexp_a.to(device), logsumexp_b.to(device)
    results: list[list[PairStats]] = [[] for _ in range(a.n_layers + 1)]
    for rows in row_blocks(n_rows):
        for layer in range(a.n_layers + 1):
            block_a, block_b = a.block(layer, rows), b.block(layer, rows)
            pairs = (
                (vocab, tile, b.tile(block_b, vocab).to(tile.device))
                for vocab in tile_chunks(a.vocab_size)
                for tile in (a.tile(block_a, vocab),)
            )
            results[layer].append(
                pair_stats(pairs, lse_a[layer, rows], lse_b[layer, rows], delta_k)
            )
    return stack_rows(results)
