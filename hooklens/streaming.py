"""Statistics over the vocabulary, accumulated one chunk of logits at a time.

The functions here see only `[rows, chunk]` blocks of logits and keep `[rows]`-sized
running sums, so a statistic over a 256k vocabulary never needs the full
`[rows, vocab]` matrix. Logits must be finite: mask with `torch.finfo(dtype).min`, not
`-inf` (then every `0 * log 0` term is an exact zero, with no `where` per element).

Single distribution, one pass (online softmax): with running max `m`,
`s = Σ exp(z - m)` and `t = Σ exp(z - m) (z - m)`, a change of `m` to `m'` rescales both
by `exp(m - m')` (and shifts `t` by `(m - m') s`); at the end `logsumexp = m + log s`
and `entropy = log s - t / s`. A reference distribution ρ known up front (the model's
output, for KL(output ‖ layer)) only needs `Σ ρ z`: `KL = lse - Σ ρ z - H(ρ)`.

Two distributions whose log-sum-exps are known (from their own single pass): one more
pass gives KL, Jensen–Shannon and total variation, each a sum of per-token terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

LN2 = math.log(2.0)


def finite_floor(dtype: torch.dtype) -> float:
    """The value masked logits take: exp() of it is an exact 0, and it stays finite."""
    return torch.finfo(dtype).min


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_j a[i, j] b[i, j], without materialising the product."""
    return torch.linalg.vecdot(a, b)


@dataclass
class ReferenceChunks:
    """A reference distribution ρ per row, served chunk by chunk.

    `log_probs(vocab)` returns `log ρ[:, vocab]`; `entropy` is `H(ρ)` per row.
    """

    log_probs: Callable[[slice], Float[Tensor, "rows chunk"]]
    entropy: Float[Tensor, " rows"]


@dataclass
class VocabStats:
    """Per-row statistics of one distribution over the whole vocabulary (nats)."""

    logsumexp: Float[Tensor, " rows"]
    entropy: Float[Tensor, " rows"]
    topk_logits: Float[Tensor, "rows k"]
    topk_ids: Int[Tensor, "rows k"]
    reference_kl: Float[Tensor, " rows"] | None = None  # KL(reference ‖ this)
    target_rank: Int[Tensor, " rows"] | None = None  # 1 = the most likely token

    @property
    def topk_log_probs(self) -> Float[Tensor, "rows k"]:
        return self.topk_logits - self.logsumexp[:, None]


def vocab_stats(
    chunks: Iterable[tuple[slice, Float[Tensor, "rows chunk"]]],
    *,
    k: int = 10,
    target_logits: Float[Tensor, " rows"] | None = None,
    targets: Int[Tensor, " rows"] | None = None,
    reference: ReferenceChunks | None = None,
) -> VocabStats:
    """One pass over `(vocab_slice, logits)` chunks covering the vocabulary in order.

    Args:
        chunks: finite logits, `[rows, chunk]` each; consumed (modified in place).
        k: how many of the most likely tokens to keep per row.
        target_logits: each row's logit of its target token, for the rank. Rows whose
            target is negative (no target) get rank 0.
        targets: the target token ids (needed with `target_logits`).
        reference: a distribution to measure KL(reference ‖ this) against.

    Ties with the target count in the target's favour (rank = 1 + #strictly larger).
    """
    running_max = running_sum = running_t = None
    topk_logits = topk_ids = None
    reference_dot = rank = None
    for vocab, logits in chunks:
        chunk_max = logits.amax(dim=-1)
        new_max = chunk_max if running_max is None else torch.maximum(running_max, chunk_max)
        # Top-k and rank use the raw logits, before they are shifted in place.
        top_values, top_ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
        top_ids += vocab.start
        if topk_logits is None or topk_ids is None:
            topk_logits, topk_ids = top_values, top_ids
        else:
            merged_values = torch.cat([topk_logits, top_values], dim=-1)
            merged_ids = torch.cat([topk_ids, top_ids], dim=-1)
            topk_logits, order = merged_values.topk(min(k, merged_values.shape[-1]), dim=-1)
            topk_ids = merged_ids.gather(-1, order)
        if target_logits is not None and targets is not None:
            larger = (logits > target_logits[:, None]).sum(-1)
            # The target's own column may round above its separately computed logit.
            inside = (targets >= vocab.start) & (targets < vocab.stop)
            own = logits.gather(-1, (targets - vocab.start).clamp(0, logits.shape[-1] - 1)[:, None])
            larger -= (inside & (own[:, 0] > target_logits)).long()
            rank = larger if rank is None else rank + larger
        if reference is not None:
            rho = reference.log_probs(vocab).exp()
            dot = _rowdot(rho, logits)
            reference_dot = dot if reference_dot is None else reference_dot + dot
        shifted = logits.sub_(new_max[:, None])
        weights = torch.exp(shifted)
        chunk_sum = weights.sum(-1)
        chunk_t = _rowdot(weights, shifted)
        if running_max is None or running_sum is None or running_t is None:
            running_sum, running_t = chunk_sum, chunk_t
        else:
            scale = torch.exp(running_max - new_max)
            running_t = scale * (running_t + (running_max - new_max) * running_sum) + chunk_t
            running_sum = scale * running_sum + chunk_sum
        running_max = new_max
    if running_max is None or running_sum is None or running_t is None:
        raise ValueError("no logits: the vocabulary is empty")
    assert topk_logits is not None and topk_ids is not None
    log_sum = torch.log(running_sum)
    lse = running_max + log_sum
    stats = VocabStats(
        logsumexp=lse,
        entropy=(log_sum - running_t / running_sum).clamp_min(0.0),
        topk_logits=topk_logits,
        topk_ids=topk_ids,
    )
    if reference is not None and reference_dot is not None:
        stats.reference_kl = (lse - reference_dot - reference.entropy).clamp_min(0.0)
    if rank is not None and targets is not None:
        stats.target_rank = torch.where(targets >= 0, rank + 1, 0)
    return stats


@dataclass
class PairStats:
    """Per-row divergences between two distributions p (self) and q (other), in nats."""

    kl: Float[Tensor, " rows"]  # KL(p ‖ q)
    js: Float[Tensor, " rows"]  # Jensen–Shannon, in [0, ln 2]
    tv: Float[Tensor, " rows"]  # total variation ½ Σ |p - q|, in [0, 1]


def pair_stats(
    chunks: Iterable[tuple[slice, Float[Tensor, "rows chunk"], Float[Tensor, "rows chunk"]]],
    logsumexp_p: Float[Tensor, " rows"],
    logsumexp_q: Float[Tensor, " rows"],
) -> PairStats:
    """One pass over `(vocab_slice, logits_p, logits_q)` chunks; normalisers known."""
    kl = js = tv = None
    for _, logits_p, logits_q in chunks:
        log_p = logits_p.sub_(logsumexp_p[:, None])
        log_q = logits_q.sub_(logsumexp_q[:, None])
        p, q = log_p.exp(), log_q.exp()
        chunk_kl = _rowdot(p, log_p - log_q)
        chunk_tv = (p - q).abs_().sum(-1)
        # log m with m = (p + q) / 2; each p log(p/m) + q log(q/m) term is ≥ 0.
        log_m = torch.logaddexp(log_p, log_q).sub_(LN2)
        chunk_js = _rowdot(p, log_p.sub_(log_m)) + _rowdot(q, log_q.sub_(log_m))
        if kl is None or js is None or tv is None:
            kl, js, tv = chunk_kl, chunk_js, chunk_tv
        else:
            kl, js, tv = kl + chunk_kl, js + chunk_js, tv + chunk_tv
    if kl is None or js is None or tv is None:
        raise ValueError("no logits: the vocabulary is empty")
    return PairStats(
        kl=kl.clamp_min(0.0), js=(0.5 * js).clamp(0.0, LN2), tv=(0.5 * tv).clamp(0.0, 1.0)
    )
