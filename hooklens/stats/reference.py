"""Textbook statistics of next-token distributions, as pure tensor functions of logits.

Every function takes logits **or** log-probabilities over the last (vocabulary) axis and
gives the same answer for both: it normalises with `log_softmax` first, which leaves
log-probabilities as they are (up to rounding). Results are in nats (or probabilities,
or ranks). These are the textbook definitions on a whole distribution, the oracle
of the tests: `hooklens.stats.streaming` computes the same quantities chunk by chunk
for trajectories, and the tests hold the two to each other.

Conventions: `0 · log 0 = 0` (a `-inf` logit is a token with probability 0); a target
id < 0 means "no target" and gives NaN (rank 0). Ranks are 1-based, as in tuned-lens:
the most likely token has rank 1.

Examples:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    >>> round(js_divergence(logits[0], logits[1]).item(), 4)
    0.1495
    >>> bool(torch.allclose(js_divergence(logits[0], logits[1]),
    ...                     js_divergence(logits[0].log_softmax(-1), logits[1])))
    True
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "LN2",
    "cross_entropy",
    "entropy",
    "js_distance",
    "js_divergence",
    "kl_divergence",
    "log_prob_diff",
    "log_probs",
    "max_probability",
    "rank",
    "target_probability",
    "to_bits",
    "total_variation",
]

LN2 = math.log(2.0)


def log_probs(logits: Float[Tensor, "... vocab"]) -> Float[Tensor, "... vocab"]:
    """`log_softmax` over the vocabulary: log-probabilities of logits, and of
    log-probabilities themselves (it is idempotent on them)."""
    return torch.log_softmax(logits, dim=-1)


def _plogp_terms(log_p: Tensor, log_q: Tensor) -> Tensor:
    """p · (log p - log q), with 0 where p = 0 (even if log q is -inf)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


def entropy(logits: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """Shannon entropy `H(p) = -Σ p log p`; 0 ≤ H ≤ ln V."""
    log_p = log_probs(logits)
    return -_plogp_terms(log_p, torch.zeros_like(log_p)).sum(-1)


def kl_divergence(
    logits_p: Float[Tensor, "... vocab"], logits_q: Float[Tensor, "... vocab"]
) -> Float[Tensor, "..."]:
    """`KL(p ‖ q) = Σ p (log p - log q)`; ≥ 0, 0 iff p = q, +inf if q = 0 where p > 0."""
    return _plogp_terms(log_probs(logits_p), log_probs(logits_q)).sum(-1).clamp_min(0.0)


def _log_mean_exp_with_zero(d: Tensor) -> Tensor:
    """`log((1 + eᵈ) / 2)`, exactly 0 at d = 0 and without cancellation near it."""
    small = torch.log1p(torch.expm1(d.clamp_max(1.0)) / 2)
    large = d - LN2 + torch.log1p(torch.exp(-d.clamp_min(1.0)))
    return torch.where(d <= 1.0, small, large)


def js_divergence(
    logits_p: Float[Tensor, "... vocab"], logits_q: Float[Tensor, "... vocab"]
) -> Float[Tensor, "..."]:
    """Jensen–Shannon divergence `½ KL(p ‖ m) + ½ KL(q ‖ m)`, `m = (p + q) / 2`.

    Symmetric and bounded: 0 ≤ JS ≤ ln 2, and exactly 0 for p = q. (tuned-lens 0.2
    returns a symmetrised KL under this name; this is the real one.)
    """
    log_p, log_q = log_probs(logits_p), log_probs(logits_q)
    # log(p / m) = -log((1 + q/p) / 2): computed from log q - log p, it is an exact 0
    # where p = q, so √JS (a metric) is 0 on equal distributions, not rounding noise.
    p, q = log_p.exp(), log_q.exp()
    zero = torch.zeros_like(p)
    terms_p = torch.where(p > 0, -p * _log_mean_exp_with_zero(log_q - log_p), zero)
    terms_q = torch.where(q > 0, -q * _log_mean_exp_with_zero(log_p - log_q), zero)
    return (0.5 * (terms_p + terms_q)).sum(-1).clamp(0.0, LN2)


def js_distance(
    logits_p: Float[Tensor, "... vocab"], logits_q: Float[Tensor, "... vocab"]
) -> Float[Tensor, "..."]:
    """Jensen–Shannon distance `√JS(p, q)`: a metric on distributions, in [0, √ln 2].

    Unlike the divergence it obeys the triangle inequality (Endres & Schindelin, 2003).
    """
    return js_divergence(logits_p, logits_q).sqrt()


def total_variation(
    logits_p: Float[Tensor, "... vocab"], logits_q: Float[Tensor, "... vocab"]
) -> Float[Tensor, "..."]:
    """Total variation distance `½ Σ |p - q|`, in [0, 1] (not tuned-lens's max |p - q|)."""
    p, q = log_probs(logits_p).exp(), log_probs(logits_q).exp()
    return (0.5 * (p - q).abs().sum(-1)).clamp(0.0, 1.0)


def max_probability(logits: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """Probability of the most likely token."""
    return log_probs(logits).amax(-1).exp()


def _gather(log_p: Tensor, targets: Tensor) -> Tensor:
    picked = log_p.gather(-1, targets.clamp_min(0)[..., None])[..., 0]
    return torch.where(targets >= 0, picked, torch.full_like(picked, math.nan))


def cross_entropy(
    logits: Float[Tensor, "... vocab"], targets: Int[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """`-log p[target]`, the loss of predicting `targets`; NaN where target < 0."""
    return -_gather(log_probs(logits), targets)


def target_probability(
    logits: Float[Tensor, "... vocab"], targets: Int[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """`p[target]`, the probability given to `targets` (`exp(-cross_entropy)`), in
    [0, 1]; NaN where target < 0."""
    return _gather(log_probs(logits), targets).exp()


def log_prob_diff(
    logits: Float[Tensor, "... vocab"],
    targets: Int[Tensor, "..."],
    anti_targets: Int[Tensor, "..."],
) -> Float[Tensor, "..."]:
    """`log p[target] - log p[anti_target]`: > 0 when the target is preferred."""
    log_p = log_probs(logits)
    return _gather(log_p, targets) - _gather(log_p, anti_targets)


def rank(logits: Float[Tensor, "... vocab"], targets: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """1-based rank of each target (1 = most likely; ties go to the target); 0 if none.

    Normalising changes no order, so logits and log-probabilities rank alike.
    """
    target_logits = logits.gather(-1, targets.clamp_min(0)[..., None])
    ranks = (logits > target_logits).sum(-1) + 1
    return torch.where(targets >= 0, ranks, torch.zeros_like(ranks))


def to_bits(nats: Tensor) -> Tensor:
    """Convert nats to bits."""
    return nats / LN2
