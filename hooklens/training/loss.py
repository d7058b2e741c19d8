"""KL(final ‖ lens) with the unembedding applied chunk by chunk, forward and backward.

Autograd through `log_softmax(h @ W_U)` keeps `[rows, vocab]` logits, probabilities and
their gradient alive at once (three times 400 MB for 2,048 tokens of a 49k vocabulary,
per layer). `ChunkedKL` keeps one `[rows, chunk]` block: the forward pass streams the
log-sum-exp and Σ q z, the backward pass recomputes each chunk's logits and adds
`(softmax(z) − q) W_Uᵀ` to the gradient of the normalised hidden state. The target
distribution q (the model's own output) is computed once per batch and shared by all
layers.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooklens.unembed import Unembed


def _logits(
    normed: Tensor, W_U: Tensor, b_U: Tensor | None, vocab: slice, softcap: float | None, dtype
) -> tuple[Tensor, Tensor | None]:
    """Chunk logits (float32) and, with a softcap, `tanh(z / cap)` for the backward."""
    raw = (normed.to(dtype) @ W_U[:, vocab].to(dtype)).float()
    if b_U is not None:
        raw = raw + b_U[vocab].float()
    if not softcap:
        return raw, None
    squashed = torch.tanh(raw / softcap)
    return squashed * softcap, squashed


class ChunkedKL(torch.autograd.Function):
    """Mean over rows of KL(q ‖ softmax(unembed(normed))), in nats."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        normed: Float[Tensor, "rows d_model"],
        target_log_probs: Float[Tensor, "rows vocab"],
        target_neg_entropy: Float[Tensor, " rows"],
        W_U: Float[Tensor, "d_model vocab"],
        b_U: Float[Tensor, " vocab"] | None,
        softcap: float | None,
        chunk: int,
        dtype: torch.dtype,
    ) -> Tensor:
        rows, vocab_size = target_log_probs.shape
        running_max = torch.full((rows,), -torch.inf, device=normed.device)
        running_sum = torch.zeros(rows, device=normed.device)
        q_dot_z = torch.zeros(rows, device=normed.device)
        for start in range(0, vocab_size, chunk):
            vocab = slice(start, min(start + chunk, vocab_size))
            logits, _ = _logits(normed, W_U, b_U, vocab, softcap, dtype)
            q_dot_z += torch.linalg.vecdot(target_log_probs[:, vocab].exp(), logits)
            new_max = torch.maximum(running_max, logits.amax(-1))
            running_sum = running_sum * torch.exp(running_max - new_max) + torch.exp(
                logits - new_max[:, None]
            ).sum(-1)
            running_max = new_max
        lse = running_max + torch.log(running_sum)
        ctx.save_for_backward(normed, target_log_probs, lse, W_U, b_U)
        ctx.softcap, ctx.chunk, ctx.dtype = softcap, chunk, dtype
        # KL = Σ q log q − Σ q z + lse
        return (target_neg_entropy - q_dot_z + lse).mean()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        normed, target_log_probs, lse, W_U, b_U = ctx.saved_tensors
        rows, vocab_size = target_log_probs.shape
        grad = torch.zeros_like(normed, dtype=torch.float32)
        scale = grad_output / rows
        for start in range(0, vocab_size, ctx.chunk):
            vocab = slice(start, min(start + ctx.chunk, vocab_size))
            logits, squashed = _logits(normed, W_U, b_U, vocab, ctx.softcap, ctx.dtype)
            delta = torch.exp(logits - lse[:, None]) - target_log_probs[:, vocab].exp()
            if squashed is not None:
                delta = delta * (1 - squashed.square())
            grad += (delta.to(ctx.dtype) @ W_U[:, vocab].T.to(ctx.dtype)).float()
        return (grad * scale).to(normed.dtype), None, None, None, None, None, None, None


def kl_to_target(
    unembed: Unembed,
    hidden: Float[Tensor, "rows d_model"],
    target_log_probs: Float[Tensor, "rows vocab"],
    target_neg_entropy: Float[Tensor, " rows"],
    *,
    chunk: int = 8192,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Mean KL(target ‖ lens readout of `hidden`), differentiable in `hidden`.

    `hidden` is the translated (not yet normalised) hidden state; the model's final norm
    is applied here with autograd. `dtype=torch.bfloat16` runs the unembedding matmuls
    in bfloat16 (about 4× faster on CPUs with AMX/AVX-512 BF16), accumulating in float32.
    """
    normed = unembed.final_norm(hidden)
    return ChunkedKL.apply(
        normed,
        target_log_probs,
        target_neg_entropy,
        unembed.W_U,
        unembed.b_U,
        unembed.logit_softcap,
        chunk,
        dtype,
    )
