"""Statistics of next-token distributions, as pure tensor functions of logits.

Every function takes logits **or** log-probabilities over the last (vocabulary) axis and
gives the same answer for both: it normalises with `log_softmax` first, which leaves
log-probabilities as they are (up to rounding). Results are in nats (or probabilities,
or ranks). These are the textbook definitions on a whole distribution;
`hooklens.streaming` computes the same quantities chunk by chunk for trajectories, and
the tests hold the two to each other.

`LogitStats` accumulates, over many batches, the marginal next-token distribution and
the sufficient statistic of the Dirichlet the predicted distributions are drawn from.

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
import torch.distributed as dist
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.distributions import Dirichlet

from hooklens.errors import InputError, InputTypeError

LN2 = math.log(2.0)
EULER_GAMMA = 0.5772156649015329


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


# --- the marginal distribution over many batches -------------------------------------------


def _inverse_digamma(y: Tensor, newton_steps: int = 5) -> Tensor:
    """`x` with `digamma(x) = y`, by Newton's method from Minka's starting point."""
    x = torch.where(y >= -2.22, y.exp() + 0.5, -1.0 / (y + EULER_GAMMA))
    for _ in range(newton_steps):
        x = x - (torch.digamma(x) - y) / torch.polygamma(1, x)
    return x


class LogitStats:
    """Online estimate of the marginal next-token distribution over many batches.

    Each `update` adds rows of logits, one predicted distribution `p` per token. Only
    two float64 `[vocab]` sums are kept, of `p` and of `log p`, so memory is O(vocab)
    however many tokens are seen. From them: `marginal_probs`, the mean `p` (the
    distribution of the next token with the context marginalised out), and
    `sufficient_stats`, the mean `log p`, all a Dirichlet fit of the `p`s needs
    (`mle`). Across `torchrun` ranks, `all_reduce_` sums them once, after the last
    update. The names are tuned-lens's (`tuned_lens.stats.LogitStats`).

    Attributes:
        n: how many rows (distributions) have been added.

    Examples:
        >>> import math, torch
        >>> stats = LogitStats()
        >>> stats.update(torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]]))  # ½ ½, then ¼ ¾
        >>> stats.n, [round(p, 6) for p in stats.marginal_probs.tolist()]
        (2, [0.375, 0.625])
    """

    def __init__(self) -> None:
        self.n = 0
        self._sum_probs: Tensor | None = None
        self._sum_log_probs: Tensor | None = None

    def __repr__(self) -> str:
        return f"LogitStats(n={self.n}, vocab={self.vocab_size})"

    @property
    def vocab_size(self) -> int | None:
        return None if self._sum_probs is None else self._sum_probs.shape[0]

    @property
    def marginal_probs(self) -> Float[Tensor, " vocab"] | None:
        """The mean predicted distribution (float64; sums to 1); None before any update."""
        if self._sum_probs is None:
            return None
        return self._sum_probs / max(self.n, 1)

    @property
    def sufficient_stats(self) -> Float[Tensor, " vocab"] | None:
        """The mean log-probability of each token (-inf for a token some row forbids)."""
        if self._sum_log_probs is None:
            return None
        return self._sum_log_probs / max(self.n, 1)

    @torch.no_grad()
    def update(
        self,
        logits: Float[Tensor, "... vocab"],
        assume_normalized: bool = False,
        mask: Bool[Tensor, "..."] | None = None,
        *,
        chunk_rows: int = 1024,
    ) -> None:
        """Add every row of `logits` (or log-probabilities) to the running sums.

        Args:
            logits: `[..., vocab]`, any float dtype; NaN (or +inf) is refused.
            assume_normalized: the rows are log-probabilities already; skips the
                `log_softmax` (as tuned-lens does).
            mask: `[...]`, True where a row counts (padding False); a mask that keeps
                no row adds nothing.
            chunk_rows: rows converted to float64 at a time (bounds the extra memory).
        """
        rows = self._rows(logits, mask)
        device = rows.device if rows.device.type != "mps" else torch.device("cpu")
        if self._sum_probs is not None:
            device = self._sum_probs.device
        sum_probs = torch.zeros(rows.shape[-1], dtype=torch.float64, device=device)
        sum_log_probs = torch.zeros_like(sum_probs)
        for start in range(0, rows.shape[0], chunk_rows):
            chunk = rows[start : start + chunk_rows].to(device=device, dtype=torch.float64)
            log_p = chunk if assume_normalized else log_probs(chunk)
            if torch.isnan(log_p).any():
                raise InputError(
                    "LogitStats.update: the logits hold NaN or +inf (no distribution); "
                    "check the model's activations or mask those rows out"
                )
            sum_probs += log_p.exp().sum(0)
            sum_log_probs += log_p.sum(0)
        # Added only now, so a refused batch leaves the statistics as they were.
        if self._sum_probs is None or self._sum_log_probs is None:
            self._sum_probs, self._sum_log_probs = sum_probs, sum_log_probs
        else:
            self._sum_probs += sum_probs
            self._sum_log_probs += sum_log_probs
        self.n += rows.shape[0]

    def _rows(self, logits: Tensor, mask: Tensor | None) -> Float[Tensor, "rows vocab"]:
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            found = logits.dtype if isinstance(logits, Tensor) else type(logits).__name__
            raise InputTypeError(
                f"LogitStats.update takes a float tensor of logits [..., vocab], got {found}"
            )
        if logits.ndim == 0 or logits.numel() == 0:
            raise InputError(
                f"LogitStats.update: empty batch (logits of shape {tuple(logits.shape)}); "
                "pass at least one row of [..., vocab] logits"
            )
        vocab = logits.shape[-1]
        if self.vocab_size is not None and vocab != self.vocab_size:
            raise InputError(
                f"LogitStats.update: these statistics have a vocabulary of {self.vocab_size} "
                f"tokens, this batch has {vocab} (last axis of {tuple(logits.shape)}); use "
                "one LogitStats per model and keep the vocabulary on the last axis"
            )
        rows = logits.reshape(-1, vocab)
        if mask is None:
            return rows
        if tuple(mask.shape) != tuple(logits.shape[:-1]):
            raise InputError(
                f"LogitStats.update: mask of shape {tuple(mask.shape)} for logits of shape "
                f"{tuple(logits.shape)}; the mask needs the logits' shape without the vocab"
            )
        return rows[mask.reshape(-1).to(device=rows.device, dtype=torch.bool)]

    def mle(self, max_iter: int = 100, tol: float = 1e-4) -> Dirichlet:
        """The maximum-likelihood Dirichlet of the distributions added so far.

        Minka's fixed point (Estimating a Dirichlet distribution, 2000, eq. 9):
        `ψ(αₖ) ← ψ(Σ α) + mean log pₖ`, from `α = marginal_probs`, until no αₖ changes
        by more than `tol` relative, or `max_iter` steps. Each step raises the
        likelihood. A token some row gives probability 0 has no finite MLE: refused.
        """
        stats = self.sufficient_stats
        if stats is None or self.marginal_probs is None:
            raise InputError("LogitStats.mle: no logits yet; call update() first")
        if not torch.isfinite(stats).all():
            forbidden = (~torch.isfinite(stats)).nonzero()[:5, 0].tolist()
            raise InputError(
                f"LogitStats.mle: tokens {forbidden} have probability 0 in some rows, so "
                "every Dirichlet gives those rows likelihood 0 and no MLE exists; fit "
                "logits without -inf entries"
            )
        alpha = self.marginal_probs.clamp_min(torch.finfo(torch.float64).tiny)
        for _ in range(max_iter):
            updated = _inverse_digamma(torch.digamma(alpha.sum()) + stats)
            converged = ((updated - alpha).abs() <= tol * alpha).all()
            alpha = updated
            if converged:
                break
        return Dirichlet(alpha)

    def all_reduce_(self) -> None:
        """Sum the statistics over the ranks of torch.distributed, in place.

        Every rank then holds the statistics of all ranks' rows. A no-op without an
        initialised process group (or with one process). Every rank must call it, once,
        after its last update; a rank that saw no rows joins with zeros.
        """
        grouped = dist.is_available() and dist.is_initialized()
        if not grouped or dist.get_world_size() < 2:
            return
        on_gpu = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu"
        vocab = self.vocab_size or 0
        # Max of (vocab, -vocab) over ranks: the largest and the smallest vocabulary.
        sizes = torch.tensor([vocab, -(vocab or 2**62)], dtype=torch.float64, device=device)
        dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
        largest, smallest = int(sizes[0]), int(-sizes[1])
        if largest == 0:
            return  # no rank saw a row
        if smallest != largest:
            raise InputError(
                f"LogitStats.all_reduce_: ranks hold vocabularies of {smallest} and "
                f"{largest} tokens; every rank must read the same model"
            )
        if self._sum_probs is None or self._sum_log_probs is None:
            self._sum_probs = torch.zeros(largest, dtype=torch.float64)
            self._sum_log_probs = torch.zeros_like(self._sum_probs)
        count = torch.tensor([float(self.n)], dtype=torch.float64)
        packed = torch.cat([self._sum_probs.cpu(), self._sum_log_probs.cpu(), count])
        packed = packed.to(device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        packed = packed.to(self._sum_probs.device)
        self._sum_probs.copy_(packed[:largest])
        self._sum_log_probs.copy_(packed[largest : 2 * largest])
        self.n = int(packed[-1].item())
