"""Statistics over the vocabulary, accumulated one chunk of logits at a time.

The functions here see only `[rows, chunk]` blocks of logits and keep `[rows]`-sized
running sums, so a statistic over a 256k vocabulary never needs the full
`[rows, vocab]` matrix. Logits must be finite: mask with `torch.finfo(dtype).min`, not
`-inf` (then every `0 * log 0` term is an exact zero, with no `where` per element).

Single distribution, one pass (online softmax): with running max `m`,
`s = Σ exp(z - m)` and `t = Σ exp(z - m) (z - m)`, a change of `m` to `m'` rescales both
by `exp(m - m')` (and shifts `t` by `(m - m') s`); at the end `logsumexp = m + log s`
and `entropy = log s - t / s`. A reference distribution ρ known up front (the model's
output, for KL(output ‖ layer)) uses `log p = (z - m_c) - (m - m_c) - log s`, where
`m_c` is the max a chunk was shifted by: `KL = Σ ρ (log ρ - (z - m_c)) + Σ_c P_c (m - m_c)
+ P log s`, with `P_c` the reference mass of chunk c. Every term is small; the textbook
`lse - Σ ρ z - H(ρ)` subtracts numbers near the logits' size and loses ~1e-5 in float32.

Two distributions whose log-sum-exps are known (from their own single pass): one more
pass gives KL, Jensen–Shannon and total variation, each a sum of per-token terms, and,
if asked, the k tokens whose probability changed most (a running top-k of |q − p|).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklens.errors import InputError

LN2 = math.log(2.0)


def finite_floor(dtype: torch.dtype) -> float:
    """The value masked logits take: exp() of it is an exact 0, and it stays finite."""
    return torch.finfo(dtype).min


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_j a[i, j] b[i, j], without materialising the product."""
    return torch.linalg.vecdot(a, b)


@dataclass
class ReferenceTile:
    """One chunk of a reference distribution ρ, with the sums every reader needs.

    Built once per chunk and shared by every distribution compared with ρ (all the
    layers of a trajectory), so its `exp` and sums are paid once, not once per layer.
    """

    probs: Float[Tensor, "*rows chunk"]
    mass: Float[Tensor, "*rows"]  # Σ ρ over the chunk
    plogp: Float[Tensor, "*rows"]  # Σ ρ log ρ over the chunk

    @classmethod
    def from_log_probs(cls, log_probs: Float[Tensor, "*rows chunk"]) -> ReferenceTile:
        """From finite log ρ (masked entries at the floor, not -inf)."""
        probs = log_probs.exp()
        return cls(probs=probs, mass=probs.sum(-1), plogp=_rowdot(probs, log_probs))


@dataclass
class VocabStats:
    """Per-row statistics of one distribution over the whole vocabulary (nats)."""

    logsumexp: Float[Tensor, "*rows"]
    entropy: Float[Tensor, "*rows"]
    topk_logits: Float[Tensor, "*rows k"]
    topk_ids: Int[Tensor, "*rows k"]
    reference_kl: Float[Tensor, "*rows"] | None = None  # KL(reference ‖ this)
    target_rank: Int[Tensor, "*rows"] | None = None  # 1 = the most likely token

    @property
    def topk_log_probs(self) -> Float[Tensor, "*rows k"]:
        return self.topk_logits - self.logsumexp[:, None]


class VocabAccumulator:
    """Running statistics of one distribution, fed chunk by chunk (see module doc).

    Args:
        k: how many of the most likely tokens to keep per row.
        targets: target token ids per row, for the rank; negative = no target (rank 0).
        target_logits: each row's logit of its target (computed apart from the chunks).

    Ties with the target count in the target's favour (rank = 1 + #strictly larger).
    """

    def __init__(
        self,
        k: int = 10,
        targets: Int[Tensor, "*rows"] | None = None,
        target_logits: Float[Tensor, "*rows"] | None = None,
    ):
        if (targets is None) != (target_logits is None):
            raise InputError("pass targets and target_logits together")
        self.k = k
        self.targets = targets
        self.target_logits = target_logits
        self._started = False
        # Running state, set by the first update(); see the module docstring.
        self.max: Tensor
        self.sum: Tensor
        self.t: Tensor
        self.topk_values: Tensor
        self.topk_ids: Tensor
        self.rank: Tensor
        self.kl_core: Tensor
        self.kl_mass: Tensor
        self.kl_shift: Tensor

    def update(
        self,
        vocab: slice,
        logits: Float[Tensor, "*rows chunk"],
        reference: ReferenceTile | None = None,
    ) -> None:
        """Fold in finite `logits` for the tokens `vocab` (overwritten in place)."""
        chunk_max = logits.amax(dim=-1)
        first = not self._started
        new_max = chunk_max if first else torch.maximum(self.max, chunk_max)
        # Top-k and rank read the raw logits, before they are shifted in place.
        self._update_topk(vocab, logits)
        if self.targets is not None and self.target_logits is not None:
            self._update_rank(vocab, logits, self.targets, self.target_logits)
        shifted = logits.sub_(new_max[:, None])
        weights = torch.exp(shifted)
        chunk_sum, chunk_t = weights.sum(-1), _rowdot(weights, shifted)
        if reference is not None:
            # Σ ρ (log ρ - shifted z) is kept apart from Σ_c P_c (m - m_c): both are small.
            core = reference.plogp - _rowdot(reference.probs, shifted)
            if first:
                self.kl_core, self.kl_mass = core, reference.mass
                self.kl_shift = torch.zeros_like(core)
            else:
                self.kl_shift = self.kl_shift + self.kl_mass * (new_max - self.max)
                self.kl_core = self.kl_core + core
                self.kl_mass = self.kl_mass + reference.mass
        if first:
            self.sum, self.t = chunk_sum, chunk_t
        else:
            scale = torch.exp(self.max - new_max)
            self.t = scale * (self.t + (self.max - new_max) * self.sum) + chunk_t
            self.sum = scale * self.sum + chunk_sum
        self.max = new_max
        self._started = True

    def _update_topk(self, vocab: slice, logits: Tensor) -> None:
        values, ids = logits.topk(min(self.k, logits.shape[-1]), dim=-1)
        ids += vocab.start
        if self._started:
            values = torch.cat([self.topk_values, values], dim=-1)
            ids = torch.cat([self.topk_ids, ids], dim=-1)
            values, order = values.topk(min(self.k, values.shape[-1]), dim=-1)
            ids = ids.gather(-1, order)
        self.topk_values, self.topk_ids = values, ids

    def _update_rank(self, vocab: slice, logits: Tensor, targets: Tensor, target_logits: Tensor):
        larger = (logits > target_logits[:, None]).sum(-1)
        # The target's own column may round above its separately computed logit.
        inside = (targets >= vocab.start) & (targets < vocab.stop)
        column = (targets - vocab.start).clamp(0, logits.shape[-1] - 1)[:, None]
        own = logits.gather(-1, column)[:, 0]
        larger -= (inside & (own > target_logits)).long()
        self.rank = larger if not self._started else self.rank + larger

    def finish(self) -> VocabStats:
        if not self._started:
            raise InputError("no logits: the vocabulary is empty")
        log_sum = torch.log(self.sum)
        stats = VocabStats(
            logsumexp=self.max + log_sum,
            entropy=(log_sum - self.t / self.sum).clamp_min(0.0),
            topk_logits=self.topk_values,
            topk_ids=self.topk_ids,
        )
        if hasattr(self, "kl_core"):
            kl = self.kl_core + self.kl_shift + self.kl_mass * log_sum
            stats.reference_kl = kl.clamp_min(0.0)
        if self.targets is not None:
            stats.target_rank = torch.where(self.targets >= 0, self.rank + 1, 0)
        return stats


def vocab_stats(
    chunks: Iterable[tuple[slice, Float[Tensor, "*rows chunk"]]],
    *,
    k: int = 10,
    target_logits: Float[Tensor, "*rows"] | None = None,
    targets: Int[Tensor, "*rows"] | None = None,
    reference: Callable[[slice], Float[Tensor, "*rows chunk"]] | None = None,
) -> VocabStats:
    """One pass over `(vocab_slice, logits)` chunks covering the vocabulary in order.

    `reference(vocab)` gives finite `log ρ[:, vocab]` of a distribution to measure
    KL(ρ ‖ this) against. Chunks are consumed (modified in place).
    """
    accumulator = VocabAccumulator(k, targets, target_logits)
    for vocab, logits in chunks:
        tile = None if reference is None else ReferenceTile.from_log_probs(reference(vocab))
        accumulator.update(vocab, logits, tile)
    return accumulator.finish()


def logsumexp_chunks(chunks: Iterable[Float[Tensor, "*rows chunk"]]) -> Float[Tensor, "*rows"]:
    """`logsumexp` over the last axis of a sequence of chunks."""
    running = None
    for chunk in chunks:
        value = torch.logsumexp(chunk, dim=-1)
        running = value if running is None else torch.logaddexp(running, value)
    if running is None:
        raise InputError("no logits: the vocabulary is empty")
    return running


@dataclass
class PairStats:
    """Per-row divergences between two distributions p (self) and q (other), in nats.

    With `delta_k` > 0, `pair_stats` also keeps the `delta_k` tokens whose probability
    changed most, largest |q − p| first: their ids and the signed changes q − p.
    """

    kl: Float[Tensor, "*rows"]  # KL(p ‖ q)
    js: Float[Tensor, "*rows"]  # Jensen–Shannon, in [0, ln 2]
    tv: Float[Tensor, "*rows"]  # total variation ½ Σ |p - q|, in [0, 1]
    delta_ids: Int[Tensor, "*rows k"] | None = None
    deltas: Float[Tensor, "*rows k"] | None = None  # q - p at delta_ids

    @property
    def delta_k(self) -> int:
        """How many largest changes each row keeps (0: none were asked for)."""
        return 0 if self.deltas is None else int(self.deltas.shape[-1])


class LargestChanges:
    """Running top-k of |q − p| over vocabulary chunks, keeping the sign of each change.

    Ties are broken by whichever token `torch.topk` returns first.
    """

    def __init__(self, k: int):
        self.k = k
        self.sizes: Tensor | None = None  # |q - p|, largest first
        self.changes: Tensor  # q - p
        self.ids: Tensor

    def update(self, vocab: slice, change: Float[Tensor, "*rows chunk"]) -> None:
        sizes, ids = change.abs().topk(min(self.k, change.shape[-1]), dim=-1)
        changes = change.gather(-1, ids)
        ids = ids + vocab.start
        if self.sizes is not None:
            sizes = torch.cat([self.sizes, sizes], dim=-1)
            changes = torch.cat([self.changes, changes], dim=-1)
            ids = torch.cat([self.ids, ids], dim=-1)
            sizes, order = sizes.topk(min(self.k, sizes.shape[-1]), dim=-1)
            changes, ids = changes.gather(-1, order), ids.gather(-1, order)
        self.sizes, self.changes, self.ids = sizes, changes, ids


def pair_stats(
    chunks: Iterable[tuple[slice, Float[Tensor, "*rows chunk"], Float[Tensor, "*rows chunk"]]],
    logsumexp_p: Float[Tensor, "*rows"],
    logsumexp_q: Float[Tensor, "*rows"],
    delta_k: int = 0,
) -> PairStats:
    """One pass over `(vocab_slice, logits_p, logits_q)` chunks; normalisers known.

    With a = log p, b = log q and s = p + q:
    KL = Σ p a - Σ p b;  JS = ½ (Σ p a + Σ q b - Σ s log s) + ln 2 · ½ Σ s;
    TV = ½ Σ |p - q|. Every sum is of entropy size, so float32 keeps ~1e-6.
    `delta_k` > 0 also keeps each row's `delta_k` largest changes q - p (`PairStats`).
    """
    totals: dict[str, Tensor] = {}
    largest = LargestChanges(delta_k) if delta_k > 0 else None
    for vocab, logits_p, logits_q in chunks:
        log_p = logits_p.sub_(logsumexp_p[:, None])
        log_q = logits_q.sub_(logsumexp_q[:, None])
        p, q = log_p.exp(), log_q.exp()
        p_log_p = _rowdot(p, log_p)
        both = p + q
        chunk = {
            "p_log_p": p_log_p,
            "p_log_q": _rowdot(p, log_q),
            "q_log_q": _rowdot(q, log_q),
            "s_log_s": torch.special.xlogy(both, both).sum(-1),  # 0 log 0 = 0
            "mass": both.sum(-1),
        }
        if largest is None:
            chunk["abs_diff"] = p.sub_(q).abs_().sum(-1)
        else:
            change = q.sub_(p)
            largest.update(vocab, change)
            chunk["abs_diff"] = change.abs_().sum(-1)
        for name, value in chunk.items():
            totals[name] = value if name not in totals else totals[name] + value
    if not totals:
        raise InputError("no logits: the vocabulary is empty")
    kl = totals["p_log_p"] - totals["p_log_q"]
    js = 0.5 * (totals["p_log_p"] + totals["q_log_q"] - totals["s_log_s"] + LN2 * totals["mass"])
    return PairStats(
        kl=kl.clamp_min(0.0),
        js=js.clamp(0.0, LN2),
        tv=(0.5 * totals["abs_diff"]).clamp(0.0, 1.0),
        delta_ids=None if largest is None else largest.ids,
        deltas=None if largest is None else largest.changes,
    )
