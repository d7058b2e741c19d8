"""Token labels of a trajectory's figures, as in tuned-lens: each cell's top-1 token
(`top_prediction_labels`) or the token whose probability changed most
(`delta_labels`), the hover tables, and a batch consolidated to one row (`*` where
sequences disagree).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from torch import Tensor

from hooklens.errors import InputError, InputTypeError
from hooklens.plotting.tokens import TokenFormatter
from hooklens.stats.streaming import PairStats
from hooklens.trajectory.statistic import TrajectoryLabels

# Label defaults of tuned-lens: hover lists 10 tokens; a Δp label needs |Δp| > float32 eps.
LABEL_TOPK = 10
MIN_PROB_DELTA = float(np.finfo(np.float32).eps)


def probability(value: Any, name: str) -> float:
    """`value` as a float in [0, 1], or a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InputTypeError(f"{name} must be a probability (a float in [0, 1]), got {value!r}")
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise InputError(f"{name} must lie in [0, 1] (a probability), got {number}")
    return number


def consolidate(tokens: np.ndarray, mixed: str = "*") -> np.ndarray:
    """`[batch, pos]` strings → `[pos]`: the token where the batch agrees, else `mixed`."""
    first = tokens[0]
    same = (tokens == first[None]).all(axis=0)
    return np.where(same, first, mixed)


def sequence_labels(
    tokenizer: Any, sequences: Tensor, formatter: TokenFormatter | None = None
) -> np.ndarray | None:
    """`[sequence, pos]` input ids → `[pos]` x-axis labels (None without a tokenizer)."""
    if tokenizer is None:
        return None
    formatter = formatter or TokenFormatter()
    return consolidate(formatter.format_ids(tokenizer, sequences.numpy()))


def cell_labels(
    tokenizer: Any, ids: Tensor, shown: Tensor, formatter: TokenFormatter | None
) -> np.ndarray:
    """`[layer, batch, pos]` ids → `[layer, pos]` strings, blank where not `shown`;
    a cell where the sequences disagree shows `*`."""
    tokens = (formatter or TokenFormatter()).format_ids(tokenizer, ids.numpy())
    tokens = np.where(shown.numpy(), tokens, "")
    return np.stack([consolidate(layer) for layer in tokens])


def hover_entries(
    tokenizer: Any, ids: Tensor, values: list[str], formatter: TokenFormatter | None
) -> np.ndarray:
    """`[layer, pos, k, 2]` (token, value) rows of the hover table."""
    tokens = (formatter or TokenFormatter(max_string_len=16)).format_ids(tokenizer, ids.numpy())
    column = np.array([*values, ""], dtype=object)[:-1].reshape(tokens.shape)
    return np.stack([tokens, column], -1)


def top_prediction_labels(
    tokenizer: Any,
    ids: Tensor,
    log_probs: Tensor,
    min_prob: float,
    k: int,
    formatter: TokenFormatter | None,
) -> TrajectoryLabels:
    """Cells: the top-1 token where its probability ≥ `min_prob`; hover: the top `k` of
    the first sequence. `ids`/`log_probs` are the kept top-k, `[layer, sequence, pos, topk]`."""
    probs = log_probs.exp()
    labels = cell_labels(tokenizer, ids[..., 0], probs[..., 0] >= min_prob, formatter)
    hover_values = [f"{100 * p:.1f}%" for p in probs[:, 0, :, :k].reshape(-1).tolist()]
    hover = hover_entries(tokenizer, ids[:, 0, :, :k], hover_values, formatter)
    return TrajectoryLabels(label_strings=labels, hover_over_entries=hover)


def delta_labels(
    tokenizer: Any,
    pair: PairStats,
    by_sequence: Any,
    min_prob_delta: float,
    topk: int,
    formatter: TokenFormatter | None,
) -> TrajectoryLabels | None:
    """Cells: the token whose probability changed most where |Δp| ≥ `min_prob_delta`
    (and Δp ≠ 0); hover: the `topk` largest changes of the first sequence (blank
    rows for tokens that did not change at all). `by_sequence` splits flat rows into
    `[layer, sequence, pos, k]` (`RowLayout.by_sequence`)."""
    if tokenizer is None or pair.delta_ids is None or pair.deltas is None:
        return None
    k = min(topk, pair.delta_k)
    ids, deltas = by_sequence(pair.delta_ids), by_sequence(pair.deltas)
    largest = deltas[..., 0].abs()
    labels = cell_labels(
        tokenizer, ids[..., 0], (largest >= min_prob_delta) & (largest > 0), formatter
    )
    first = deltas[:, 0, :, :k]
    hover_values = [f"Δ{100 * d:+.2f}%" for d in first.reshape(-1).tolist()]
    hover = hover_entries(tokenizer, ids[:, 0, :, :k], hover_values, formatter)
    # Tokens whose probability did not change at all are no answer to "what changed".
    hover[(first == 0).numpy()] = ""
    return TrajectoryLabels(label_strings=labels, hover_over_entries=hover)


def rank_labels(labels: TrajectoryLabels, matrix: np.ndarray) -> TrajectoryLabels:
    """`labels` whose cells show the (batch-mean) rank `matrix` instead of a token."""
    text = np.where(np.isnan(matrix), "", np.char.mod("%d", np.nan_to_num(matrix)))
    return replace(labels, label_strings=text)
