"""Statistics of next-token distributions, as pure tensor functions of logits.

A leaf kit: it imports only torch and `hooklens.errors`. Modules:

- `reference`: the textbook definitions on a whole `[..., vocab]` distribution
  (`entropy`, `kl_divergence`, `js_divergence`, `cross_entropy`, `rank`, ...); the
  oracle the tests hold the streaming kernel to.
- `streaming`: the same quantities accumulated one `[rows, chunk]` tile of logits at a
  time (`VocabAccumulator`, `pair_stats`), so no statistic needs `[rows, vocab]`;
  `PredictionTrajectory` streams through it.
- `logit_stats`: `LogitStats`, the marginal next-token distribution over many batches
  and its Dirichlet fit.

Every function takes logits **or** log-probabilities over the last (vocabulary) axis
and gives the same answer for both. Results are in nats (or probabilities, or ranks).

Examples:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    >>> round(js_divergence(logits[0], logits[1]).item(), 4)
    0.1495
"""

from hooklens.stats.logit_stats import EULER_GAMMA, LogitStats, inverse_digamma
from hooklens.stats.reference import (
    LN2,
    cross_entropy,
    entropy,
    js_distance,
    js_divergence,
    kl_divergence,
    log_prob_diff,
    log_probs,
    max_probability,
    rank,
    to_bits,
    total_variation,
)
from hooklens.stats.streaming import (
    LargestChanges,
    PairStats,
    ReferenceTile,
    VocabAccumulator,
    VocabStats,
    finite_floor,
    logsumexp_chunks,
    pair_stats,
    vocab_stats,
)

__all__ = [
    "EULER_GAMMA",
    "LN2",
    "LargestChanges",
    "LogitStats",
    "PairStats",
    "ReferenceTile",
    "VocabAccumulator",
    "VocabStats",
    "cross_entropy",
    "entropy",
    "finite_floor",
    "inverse_digamma",
    "js_distance",
    "js_divergence",
    "kl_divergence",
    "log_prob_diff",
    "log_probs",
    "logsumexp_chunks",
    "max_probability",
    "pair_stats",
    "rank",
    "to_bits",
    "total_variation",
    "vocab_stats",
]
