"""Statistics of next-token distributions, as pure tensor functions of log-probabilities.

Every function takes log-probabilities over the last (vocabulary) axis and returns
nats (or probabilities, or ranks). These are the textbook definitions on a whole
distribution; `hooklens.streaming` computes the same quantities chunk by chunk for
trajectories, and the tests hold the two to each other.

Conventions: `0 · log 0 = 0`; a target id < 0 means "no target" and gives NaN (rank 0).
Ranks are 1-based, as in tuned-lens: the most likely token has rank 1.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

LN2 = math.log(2.0)


def _plogp_terms(log_p: Tensor, log_q: Tensor) -> Tensor:
    """p · (log p - log q), with 0 where p = 0 (even if log q is -inf)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


def entropy(log_p: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """Shannon entropy `H(p) = -Σ p log p`; 0 ≤ H ≤ ln V."""
    return -_plogp_terms(log_p, torch.zeros_like(log_p)).sum(-1)


def kl_divergence(
    log_p: Float[Tensor, "... vocab"], log_q: Float[Tensor, "... vocab"]
) -> Float[Tensor, "..."]:
    """`KL(p ‖ q) = Σ p (log p - log q)`; ≥ 0, 0 iff p = q, +inf if q = 0 where p > 0."""
    return _plogp_terms(log_p, log_q).sum(-1).clamp_min(0.0)


def js_divergence(
    log_p: Float[Tensor, "... vocab"], log_q: Float[Tensor, "... vocab"]
) -> Float[Tensor, "..."]:
    """Jensen–Shannon divergence `½ KL(p ‖ m) + ½ KL(q ‖ m)`, `m = (p + q) / 2`.

    Symmetric and bounded: 0 ≤ JS ≤ ln 2. (tuned-lens 0.2 returns a symmetrised KL
    under this name; this is the real one.)
    """
    log_m = torch.logaddexp(log_p, log_q) - LN2
    return (0.5 * (_plogp_terms(log_p, log_m) + _plogp_terms(log_q, log_m)).sum(-1)).clamp(0.0, LN2)


def total_variation(
    log_p: Float[Tensor, "... vocab"], log_q: Float[Tensor, "... vocab"]
) -> Float[Tensor, "..."]:
    """Total variation distance `½ Σ |p - q|`, in [0, 1] (not tuned-lens's max |p - q|)."""
    return (0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)).clamp(0.0, 1.0)


def max_probability(log_p: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """Probability of the most likely token."""
    return log_p.amax(-1).exp()


def _gather(log_p: Tensor, targets: Tensor) -> Tensor:
    picked = log_p.gather(-1, targets.clamp_min(0)[..., None])[..., 0]
    return torch.where(targets >= 0, picked, torch.full_like(picked, math.nan))


def cross_entropy(
    log_p: Float[Tensor, "... vocab"], targets: Int[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """`-log p[target]`, the loss of predicting `targets`; NaN where target < 0."""
    return -_gather(log_p, targets)


def log_prob_diff(
    log_p: Float[Tensor, "... vocab"], targets: Int[Tensor, "..."], anti_targets: Int[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """`log p[target] - log p[anti_target]`: > 0 when the target is preferred."""
    return _gather(log_p, targets) - _gather(log_p, anti_targets)


def rank(log_p: Float[Tensor, "... vocab"], targets: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """1-based rank of each target (1 = most likely; ties go to the target); 0 if none."""
    target_log_p = log_p.gather(-1, targets.clamp_min(0)[..., None])
    ranks = (log_p > target_log_p).sum(-1) + 1
    return torch.where(targets >= 0, ranks, torch.zeros_like(ranks))


def to_bits(nats: Tensor) -> Tensor:
    """Convert nats to bits."""
    return nats / LN2
