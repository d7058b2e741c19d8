"""KL(target ‖ lens) from a few vocabulary columns: the exact loss's FLOPs cut ~40×.

The exact loss (`hooklens.core.chunked_kl`) costs two `[rows, d_model] × [d_model,
vocab]` matmuls per layer: the readout and its gradient. Write the KL as

    KL(q ‖ p) = Σ q log q − Σ_v q_v z_v + log Z,   Z = Σ_v exp(z_v),   z = n W_U + b.

The middle term is `n · (q W_Uᵀ) + q · b`, exact from the target's projection that
every layer shares (one vocabulary matmul per batch, not per layer). Only `log Z` needs
every logit; it is estimated from each row's `top_k` target tokens, taken exactly, and
`samples` tokens drawn for the whole batch from a proposal π (half the batch's mean
target distribution, half uniform), importance-weighted:

    Ẑ = Σ_{v ∈ top(row)} exp(z_v) + (1/m) Σ_j exp(z_{v_j}) · [v_j ∉ top(row)] / π_{v_j}.

Ẑ is unbiased for Z; `log Ẑ` (the loss) is biased low by Jensen's inequality, and its
gradient, the self-normalised softmax over the kept columns, carries an O(1/m) bias.
The gradient of `Σ q z` is taken from the same columns (its value stays exact): the
gradient `Σ_v (p_v − q_v) W_v` is then estimated as one difference, whose noise
shrinks as the lens nears the target, instead of a small difference of two exact and
estimated large sums.
`benchmarks/sampled_kl.py` measures both against the exact loss on SmolLM2, and whether
the cheaper steps reach a lower held-out KL in the same wall time (the training guide
has the table). A softcap makes `Σ q z` non-linear in `n`, so it is refused here.

Examples:
    >>> import torch
    >>> from hooklens import Unembed
    >>> unembed = Unembed(torch.nn.Identity(), torch.randn(8, 500))
    >>> q = torch.softmax(3 * torch.randn(4, 500), -1)
    >>> columns = sample_columns(unembed, q, top_k=8, samples=64)
    >>> loss = sampled_kl_to_target(unembed, torch.randn(4, 8), columns)
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklens.core import chunked_kl
from hooklens.core.unembed import Unembed
from hooklens.errors import InputError

UNIFORM_SHARE = 0.5  # of the proposal; the rest is the batch's mean target distribution


class SampledColumns(NamedTuple):
    """The vocabulary columns one batch's loss reads, shared by every layer."""

    top: Int[Tensor, "rows k"]  # each row's top-k target tokens
    top_weights: Float[Tensor, "rows k d_model"]  # their W_U columns, in the matmul dtype
    sampled: Int[Tensor, " m"]  # tokens drawn for the whole batch from the proposal
    sampled_weights: Float[Tensor, "d_model m"]
    log_weights: Float[Tensor, "rows m"]  # −log(m π_v); −inf where v is in the row's top
    target_projection: Float[Tensor, "rows d_model"]  # q W_Uᵀ
    target_neg_entropy: Float[Tensor, " rows"]  # Σ q log q
    target_bias: Float[Tensor, " rows"] | None  # q · b_U
    top_probs: Float[Tensor, "rows k"]  # q at the row's top tokens
    sampled_probs: Float[Tensor, "rows m"]  # q at the drawn tokens


def sample_columns(
    unembed: Unembed,
    target_probs: Float[Tensor, "rows vocab"],
    *,
    top_k: int = 32,
    samples: int = 1024,
    dtype: torch.dtype = torch.float32,
    target_projection: Float[Tensor, "rows d_model"] | None = None,
    target_neg_entropy: Float[Tensor, " rows"] | None = None,
    generator: torch.Generator | None = None,
) -> SampledColumns:
    """Draw the columns of one batch (`torch`'s global generator unless `generator`).

    `target_projection` (`q W_Uᵀ`, one vocabulary matmul) and `target_neg_entropy`
    (`Σ q log q`, a pass over `[rows, vocab]`): pass them if already computed, as
    `target_distribution` and `target_projection` of `hooklens.core.chunked_kl` do.
    """
    if unembed.logit_softcap:
        raise InputError(
            "the sampled KL cannot read a model with a logit softcap (its Σ q z needs "
            "every logit); train with the exact loss (kl_samples=0)"
        )
    if top_k < 1 or samples < 1:
        raise InputError(f"top_k and samples must be at least 1, got {top_k} and {samples}")
    vocab = unembed.d_vocab
    W = unembed.W_U.detach()
    with torch.no_grad():
        top = target_probs.topk(min(top_k, vocab), dim=-1).indices
        proposal = (1 - UNIFORM_SHARE) * target_probs.mean(0) + UNIFORM_SHARE / vocab
        sampled = torch.multinomial(proposal, samples, replacement=True, generator=generator)
        log_weights = -(math.log(samples) + proposal[sampled].log())
        in_top = (sampled[None, :, None] == top[:, None, :]).any(-1)
        log_weights = log_weights.expand_as(in_top).masked_fill(in_top, -torch.inf)
        if target_projection is None:  # chunked over the vocabulary, as the exact loss's
            target_projection = chunked_kl.target_projection(unembed, target_probs)
        neg_entropy = target_neg_entropy
        if neg_entropy is None:
            neg_entropy = torch.special.xlogy(target_probs, target_probs).sum(-1)
        bias = unembed.b_U
        target_bias = target_probs @ bias.float() if bias is not None else None
    return SampledColumns(
        top,
        W.T[top].to(dtype),
        sampled,
        W[:, sampled].to(dtype).contiguous(),
        log_weights,
        target_projection.float(),
        neg_entropy,
        target_bias,
        target_probs.gather(1, top).float(),
        target_probs[:, sampled].float(),
    )


def sampled_kl_to_target(
    unembed: Unembed, hidden: Float[Tensor, "rows d_model"], columns: SampledColumns
) -> Tensor:
    """Mean over rows of the sampled estimate of KL(target ‖ lens readout of `hidden`),
    differentiable in `hidden` (autograd over `[rows, top_k + samples]` logits only);
    `columns` (from `sample_columns`) holds the target.
    """
    if hidden.shape[0] != columns.top.shape[0]:
        raise InputError(
            f"columns were drawn for {columns.top.shape[0]} rows, hidden has {hidden.shape[0]}"
        )
    normed = unembed.final_norm(hidden)
    low = normed.to(columns.sampled_weights.dtype)
    top_logits = torch.einsum("rd,rkd->rk", low, columns.top_weights).float()
    sampled_logits = (low @ columns.sampled_weights).float()
    bias = unembed.b_U
    if bias is not None:
        top_logits = top_logits + bias[columns.top].float()
        sampled_logits = sampled_logits + bias[columns.sampled].float()
    log_z = torch.logsumexp(torch.cat([top_logits, sampled_logits + columns.log_weights], -1), -1)
    # Σ q z: its value exact (the projection), its gradient from the same columns as
    # log Ẑ's, so that the two estimates' noise cancels where the lens is near the
    # target (the control variate that makes a few thousand columns enough).
    exact = torch.linalg.vecdot(normed.float(), columns.target_projection)
    if columns.target_bias is not None:
        exact = exact + columns.target_bias
    weights = columns.log_weights.exp()  # 1 / (m π_v), 0 in the row's top
    estimate = torch.linalg.vecdot(columns.top_probs, top_logits) + torch.linalg.vecdot(
        columns.sampled_probs * weights, sampled_logits
    )
    q_dot_z = estimate + (exact - estimate).detach()
    return (columns.target_neg_entropy - q_dot_z + log_z).mean()
