"""KL(final ‖ lens) with the unembedding applied chunk by chunk, forward and backward.

Autograd through `log_softmax(h @ W_U)` keeps `[rows, vocab]` logits, probabilities and
their gradient alive at once (three times 400 MB for 2,048 tokens of a 49k vocabulary,
per layer). `ChunkedKL` keeps one `[rows, chunk]` block and computes the loss and its
gradient in the same pass over the vocabulary (two matmuls per chunk, as autograd
would, but no `[rows, vocab]` tensor). The target distribution q (the model's own
output) and its projection `q W_Uᵀ` are computed once per batch and shared by all
layers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooklens.core.precision import float32_accumulation
from hooklens.core.unembed import VOCAB_CHUNK, Unembed, vocab_chunks
from hooklens.errors import InputError

# float16's largest finite value is 65,504; the gradient matmul's outputs stay below this.
_FP16_OUTPUT_BOUND = 2.0**15


class WeightChunks(list):
    """`W_U`'s vocabulary chunks in the matmul dtype (a list), with `operand_scale`: the
    power of two the float16 gradient matmul multiplies its softmax weights by.

    Each gradient output row is `Σ_v w_v W[:, v]` over a chunk, with weights
    `w_v = exp(z_v − max) ≤ 1`: up to `chunk · max|W|`, which overflows float16 when the
    readout is flat and W_U has a large dimension (a folded norm gain of 10 over 8,192
    tokens is 81,920). Scaling the weights down by a power of two keeps that below
    2¹⁵ and costs nothing in precision (exponents only); weights below float16's
    smallest subnormal (6e-8 after scaling) are lost, a relative error far below the
    output's own rounding. The other matmuls need no scaling: logits are the model's
    own magnitude, and `Σ_v q_v W[:, v] ≤ max|W|` since q sums to one.
    """

    operand_scale: float = 1.0


def weight_chunks(
    W_U: Float[Tensor, "d_model vocab"], chunk: int, dtype: torch.dtype
) -> WeightChunks:
    """`W_U` split into vocabulary chunks in the matmul dtype, converted once.

    Converting a chunk to bfloat16 inside the loop would cost a copy per chunk, layer
    and batch (a quarter of a training step's time on SmolLM2); the model is frozen, so
    one conversion serves the whole run.
    """
    chunks = WeightChunks(
        W_U[:, vocab].to(dtype).contiguous() for vocab in vocab_chunks(W_U.shape[-1], chunk)
    )
    if dtype == torch.float16:
        largest = max(float(w.detach().abs().amax()) * w.shape[-1] for w in chunks)
        if largest > _FP16_OUTPUT_BOUND:
            chunks.operand_scale = 2.0 ** -math.ceil(math.log2(largest / _FP16_OUTPUT_BOUND))
    return chunks


def _logits(
    normed: Tensor, w_chunk: Tensor, b_U: Tensor | None, vocab: slice, softcap: float | None
) -> tuple[Tensor, Tensor | None]:
    """Chunk logits (float32) and, with a softcap, `tanh(z / cap)` for the backward."""
    raw = (normed.to(w_chunk.dtype) @ w_chunk).float()
    if b_U is not None:
        raw = raw + b_U[vocab].float()
    if not softcap:
        return raw, None
    squashed = torch.tanh(raw / softcap)
    return squashed * softcap, squashed


class ChunkedKL(torch.autograd.Function):
    """Mean over rows of KL(q ‖ softmax(unembed(normed))), in nats.

    The gradient is accumulated during the forward pass, so each chunk's logits are
    computed once: ∂KL/∂normed = (softmax(z) − q) W_Uᵀ = G₁ / s − q W_Uᵀ, where
    G₁ = Σ_c exp(z_c − m) W_cᵀ and s = Σ exp(z − m) are rescaled like an online
    softmax whenever the running max m grows. `q W_Uᵀ` does not depend on the layer and
    is passed in (`target_projection`), computed once per batch. With a softcap the
    chain rule weights each term by 1 − tanh², so q's term is accumulated per layer.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        normed: Float[Tensor, "rows d_model"],
        target_probs: Float[Tensor, "rows vocab"],
        target_neg_entropy: Float[Tensor, " rows"],
        target_projection: Float[Tensor, "rows d_model"] | None,
        w_chunks: list[Tensor],
        b_U: Float[Tensor, " vocab"] | None,
        softcap: float | None,
    ) -> Tensor:
        rows = target_probs.shape[0]
        needs_grad = ctx.needs_input_grad[0]
        running_max = torch.full((rows,), -torch.inf, device=normed.device)
        running_sum = torch.zeros(rows, device=normed.device)
        q_dot_z = torch.zeros(rows, device=normed.device)
        model_term = torch.zeros(rows, normed.shape[-1], device=normed.device)
        target_term = torch.zeros_like(model_term) if softcap and needs_grad else None
        # Σ_v q_v z_v = normed · (q W_Uᵀ) when z = normed W_U: one [rows, d] dot product
        # instead of a pass over every [rows, chunk] block.
        project = softcap is None and b_U is None and target_projection is not None
        operand_scale = getattr(w_chunks, "operand_scale", 1.0)
        if project:
            matmul_normed = normed.to(w_chunks[0].dtype).float()
            q_dot_z = torch.linalg.vecdot(matmul_normed, target_projection)
        start = 0
        for w_chunk in w_chunks:
            vocab = slice(start, start + w_chunk.shape[-1])
            start = vocab.stop
            logits, squashed = _logits(normed, w_chunk, b_U, vocab, softcap)
            q = target_probs[:, vocab]
            if not project:
                q_dot_z += torch.linalg.vecdot(q, logits)
            new_max = torch.maximum(running_max, logits.amax(-1))
            scale = torch.exp(running_max - new_max)
            weights = logits.sub_(new_max[:, None]).exp_()  # in place: logits are done
            running_sum = running_sum * scale + weights.sum(-1)
            running_max = new_max
            if not needs_grad:
                continue
            dtype = w_chunk.dtype
            if squashed is not None and target_term is not None:
                slope = 1 - squashed.square()
                weights = weights * slope
                target_term += ((q * slope).to(dtype) @ w_chunk.T).float()
            if operand_scale != 1.0:  # float16 only (WeightChunks)
                weights = weights * operand_scale
            chunk_term = (weights.to(dtype) @ w_chunk.T).float()
            if operand_scale != 1.0:
                chunk_term /= operand_scale
            model_term = model_term * scale[:, None] + chunk_term
        lse = running_max + torch.log(running_sum)
        if needs_grad:
            if target_term is None:
                if target_projection is None:
                    raise InputError("pass target_projection (q W_Uᵀ) when there is no softcap")
                target_term = target_projection
            grad = (model_term / running_sum[:, None] - target_term) / rows
            ctx.save_for_backward(grad.to(normed.dtype))
        # KL = Σ q log q − Σ q z + lse
        return (target_neg_entropy - q_dot_z + lse).mean()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * grad_output, *([None] * 7))


def target_distribution(
    logits: Float[Tensor, "rows vocab"], block: int = 512
) -> tuple[Float[Tensor, "rows vocab"], Float[Tensor, " rows"]]:
    """The model's output probabilities q (shared by every layer) and Σ q log q per
    token, written over `logits` block by block: one `[tokens, vocab]` tensor in all."""
    neg_entropy = torch.empty(logits.shape[0], device=logits.device)
    for start in range(0, logits.shape[0], block):
        rows = logits[start : start + block]
        rows.sub_(rows.logsumexp(-1, keepdim=True))  # log q
        neg_entropy[start : start + block] = torch.linalg.vecdot(rows.exp(), rows)
        rows.exp_()
    return logits, neg_entropy


def target_projection(
    unembed: Unembed,
    target_probs: Float[Tensor, "rows vocab"],
    *,
    chunk: int = VOCAB_CHUNK,
    dtype: torch.dtype = torch.float32,
    w_chunks: list[Tensor] | None = None,
) -> Float[Tensor, "rows d_model"]:
    """`q W_Uᵀ` for the target distribution q: the layer-independent half of the gradient."""
    if w_chunks is None:
        w_chunks = weight_chunks(unembed.W_U, chunk, dtype)
    out = torch.zeros(target_probs.shape[0], unembed.d_model, device=target_probs.device)
    start = 0
    with float32_accumulation(w_chunks[0].dtype, out.device):
        for w_chunk in w_chunks:
            q = target_probs[:, start : start + w_chunk.shape[-1]]
            out += (q.to(w_chunk.dtype) @ w_chunk.T).float()
            start += w_chunk.shape[-1]
    return out


def kl_to_target(
    unembed: Unembed,
    hidden: Float[Tensor, "rows d_model"],
    target_probs: Float[Tensor, "rows vocab"],
    target_neg_entropy: Float[Tensor, " rows"],
    projection: Float[Tensor, "rows d_model"] | None = None,
    *,
    chunk: int = VOCAB_CHUNK,
    dtype: torch.dtype = torch.float32,
    w_chunks: list[Tensor] | None = None,
) -> Tensor:
    """Mean KL(target ‖ lens readout of `hidden`), differentiable in `hidden`.

    The target is given as probabilities q and its negative entropy Σ q log q.

    `hidden` is the translated (not yet normalised) hidden state; the model's final norm
    is applied here with autograd. Pass `projection = target_projection(...)` when
    calling this for many layers with the same target (it is computed here otherwise).
    `dtype=torch.bfloat16` (or `torch.float16`) runs the unembedding matmuls in 16 bits,
    accumulating in float32: bf16 is about 4× faster where it is native, ~100× slower
    where it is emulated (`hooklens.core.precision.matmul_dtype("auto")` decides). Pass `w_chunks =
    weight_chunks(W_U, chunk, dtype)` when calling this repeatedly (it then decides the
    chunking and dtype).
    """
    normed = unembed.final_norm(hidden)
    if w_chunks is None:
        w_chunks = weight_chunks(unembed.W_U, chunk, dtype)
    needs_grad = torch.is_grad_enabled() and normed.requires_grad
    if projection is None and needs_grad and not unembed.logit_softcap:
        projection = target_projection(unembed, target_probs, w_chunks=w_chunks)
    with float32_accumulation(w_chunks[0].dtype, normed.device):
        return ChunkedKL.apply(
            normed,
            target_probs,
            target_neg_entropy,
            projection,
            w_chunks,
            unembed.b_U,
            unembed.logit_softcap,
        )
