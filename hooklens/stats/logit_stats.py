"""`LogitStats`: the marginal next-token distribution over many batches.

It accumulates, over many batches, the marginal next-token distribution and the
sufficient statistic of the Dirichlet the predicted distributions are drawn from.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from jaxtyping import Bool, Float
from torch import Tensor
from torch.distributions import Dirichlet

from hooklens.errors import InputError, InputTypeError
from hooklens.stats.reference import log_probs

EULER_GAMMA = 0.5772156649015329


def inverse_digamma(y: Tensor, newton_steps: int = 5) -> Tensor:
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
            updated = inverse_digamma(torch.digamma(alpha.sum()) + stats)
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
            self._sum_probs = torch.zeros(largest, dtype=torch.float64, device=device)
            self._sum_log_probs = torch.zeros_like(self._sum_probs)
        count = torch.tensor([float(self.n)], dtype=torch.float64, device="cpu")
        packed = torch.cat([self._sum_probs.cpu(), self._sum_log_probs.cpu(), count])
        packed = packed.to(device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        packed = packed.to(self._sum_probs.device)
        self._sum_probs.copy_(packed[:largest])
        self._sum_log_probs.copy_(packed[largest : 2 * largest])
        self.n = int(packed[-1].item())
