"""Token labels of a trajectory's figures, as in tuned-lens: each cell's top-1 token
(`top_prediction_labels`) or the token whose probability changed most
(`delta_labels`), the hover tables, and a batch consolidated to one row (`*` where
sequences disagree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from torch import Tensor

from hooklens.errors import InputError, InputTypeError
from hooklens.plotting.tokens import TokenFormatter
from hooklens.stats.streaming import PairStats
from hooklens.trajectory.statistic import TrajectoryLabels

# Most likely tokens a trajectory keeps per cell (for labels and hover) unless told:
# this many, or the whole vocabulary where it is smaller.
DEFAULT_TOPK = 5
# Label defaults of tuned-lens: hover lists 10 tokens; a Δp label needs |Δp| > float32 eps.
LABEL_TOPK = 10
MIN_PROB_DELTA = float(np.finfo(np.float32).eps)
# tuned-lens's `max_entries_to_show`: the hover of `largest_prob_labels` and
# `largest_delta_in_prob_labels` lists this many sequences of a batch side by side.
MAX_ENTRIES_TO_SHOW = 3


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
    tokenizer: Any,
    ids: Tensor,
    values: Tensor,
    written: Callable[[float], str],
    formatter: TokenFormatter | None,
) -> np.ndarray:
    """`[layer, pos, k, 2 × sequences]` rows of the hover table, as in tuned-lens: row i
    lists the i-th token of each sequence and its value (`written(value)`), side by
    side. `ids` and `values` are `[layer, sequence, pos, k]`."""
    tokens = (formatter or TokenFormatter(max_string_len=16)).format_ids(tokenizer, ids.numpy())
    texts = [written(value) for value in values.reshape(-1).tolist()]
    column = np.array([*texts, ""], dtype=object)[:-1]
    column = column.reshape(tokens.shape)
    # [layer, sequence, pos, k, 2] → [layer, pos, k, sequence × 2]: (token, value) pairs.
    pairs = np.stack([tokens, column], -1).transpose(0, 2, 3, 1, 4)
    return pairs.reshape(*pairs.shape[:3], -1)


def _percent(p: float) -> str:
    return f"{100 * p:.1f}%"


def _change(delta: float) -> str:
    return f"Δ{100 * delta:+.2f}%"


def top_prediction_labels(
    tokenizer: Any,
    ids: Tensor,
    log_probs: Tensor,
    min_prob: float,
    k: int,
    formatter: TokenFormatter | None,
    sequences: int = 1,
) -> TrajectoryLabels:
    """Cells: the top-1 token where its probability ≥ `min_prob`; hover: the top `k` of
    the first `sequences` sequences. `ids`/`log_probs` are the kept top-k,
    `[layer, sequence, pos, topk]`."""
    probs = log_probs.exp()
    labels = cell_labels(tokenizer, ids[..., 0], probs[..., 0] >= min_prob, formatter)
    shown = slice(0, sequences)
    hover = hover_entries(
        tokenizer, ids[:, shown, :, :k], probs[:, shown, :, :k], _percent, formatter
    )
    return TrajectoryLabels(label_strings=labels, hover_over_entries=hover)


def delta_labels(
    tokenizer: Any,
    pair: PairStats,
    by_sequence: Any,
    min_prob_delta: float,
    topk: int,
    formatter: TokenFormatter | None,
    sequences: int = 1,
) -> TrajectoryLabels | None:
    """Cells: the token whose probability changed most where |Δp| ≥ `min_prob_delta`
    (and Δp ≠ 0); hover: the `topk` largest changes of the first `sequences` sequences
    (blank entries for tokens that did not change at all). `by_sequence` splits flat
    rows into `[layer, sequence, pos, k]` (`RowLayout.by_sequence`)."""
    if tokenizer is None or pair.delta_ids is None or pair.deltas is None:
        return None
    k = min(topk, pair.delta_k)
    ids, deltas = by_sequence(pair.delta_ids), by_sequence(pair.deltas)
    largest = deltas[..., 0].abs()
    labels = cell_labels(
        tokenizer, ids[..., 0], (largest >= min_prob_delta) & (largest > 0), formatter
    )
    shown = deltas[:, :sequences, :, :k]
    hover = hover_entries(tokenizer, ids[:, :sequences, :, :k], shown, _change, formatter)
    # Tokens whose probability did not change at all are no answer to "what changed":
    # both entries of such a (token, Δp) pair are blank.
    unchanged = (shown == 0).permute(0, 2, 3, 1).numpy()  # [layer, pos, k, sequence]
    hover[np.repeat(unchanged, 2, axis=-1)] = ""
    return TrajectoryLabels(label_strings=labels, hover_over_entries=hover)


def rank_labels(labels: TrajectoryLabels, matrix: np.ndarray) -> TrajectoryLabels:
    """`labels` whose cells show the (batch-mean) rank `matrix` instead of a token."""
    text = np.where(np.isnan(matrix), "", np.char.mod("%d", np.nan_to_num(matrix)))
    return replace(labels, label_strings=text)
