"""Statistics of next-token distributions, as pure tensor functions of log-probabilities.

Every function reduces the last (vocabulary) axis and returns nats.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def entropy(log_p: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """Shannon entropy `H(p) = -Σ p log p`, in nats; 0 ≤ H ≤ ln V."""
    return -(log_p.exp() * log_p).sum(-1)


def kl_divergence(
    log_p: Float[Tensor, "... vocab"], log_q: Float[Tensor, "... vocab"]
) -> Float[Tensor, "..."]:
    """`KL(p ‖ q) = Σ p (log p - log q)`, in nats; ≥ 0, and 0 iff p = q."""
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def to_bits(nats: Tensor) -> Tensor:
    """Convert nats to bits."""
    return nats / torch.log(torch.tensor(2.0, dtype=nats.dtype))
