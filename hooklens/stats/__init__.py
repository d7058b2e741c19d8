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

from hooklens.stats import reference
from hooklens.stats.logit_stats import EULER_GAMMA, LogitStats, inverse_digamma
from hooklens.stats.reference import *  # noqa: F403 (its __all__: the textbook functions)
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
    *reference.__all__,
    "EULER_GAMMA",
    "LargestChanges",
    "LogitStats",
    "PairStats",
    "ReferenceTile",
    "VocabAccumulator",
    "VocabStats",
    "finite_floor",
    "inverse_digamma",
    "logsumexp_chunks",
    "pair_stats",
    "vocab_stats",
]
