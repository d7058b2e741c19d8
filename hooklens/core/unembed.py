"""The model's own map from a final hidden state to logits: norm → W_U, b_U → scale →
softcap.

The vocabulary is the big axis (49k to 256k), so everything that only needs a reduction
over it (log-sum-exp, and later entropy, KL, ranks) streams over vocabulary chunks and
never holds more than one `[..., chunk]` block of logits at a time. `vocab_chunks` is the
one vocabulary chunker and `VOCAB_CHUNK` its one default size; every module that walks
the vocabulary in blocks takes its slices from it.

Examples:
    >>> list(vocab_chunks(10, 4))
    [slice(0, 4, None), slice(4, 8, None), slice(8, 10, None)]
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooklens._checks import validate_hidden
from hooklens.core.adapter import ModelAdapter
from hooklens.core.inversion import InversionOutput, OptimizerName, invert_unembed
from hooklens.errors import InputError
from hooklens.stats.streaming import logsumexp_chunks

# Vocabulary tokens per block of logits: `[rows, 8192]` float32 is 32 KiB a row, small
# beside W_U and large enough that each block is one efficient matmul.
VOCAB_CHUNK = 8192
DEFAULT_CHUNK_SIZE = VOCAB_CHUNK  # the name Unembed's `chunk_size` default had


def vocab_chunks(d_vocab: int, chunk_size: int = VOCAB_CHUNK) -> Iterator[slice]:
    """Consecutive slices of `range(d_vocab)`, each `chunk_size` long but the last: the
    one way hooklens walks the vocabulary in blocks."""
    step = check_chunk_size(chunk_size)
    for start in range(0, d_vocab, step):
        yield slice(start, min(start + step, d_vocab))


class _ScaledNorm(nn.Module):
    """The final norm followed by the model's logit scale: `(s·n) W_U + s·b = s·(n W_U +
    b)`, so every reader of `final_norm`, `W_U` and `b_U` gets the scaled logits."""

    def __init__(self, norm: nn.Module, scale: float):
        super().__init__()
        self.norm, self.scale = norm, scale

    def forward(self, h: Tensor) -> Tensor:
        return self.norm(h) * self.scale


class Unembed:
    """Final norm, unembedding matrix and bias, logit scale and softcap of a model.

    It holds references to the model's own tensors (no copies) and is not an
    `nn.Module`, so a lens that owns one never trains or saves the model's weights. A
    logit scale other than 1 (Cohere, Granite, Falcon-H1:
    `hooklens.core.output_transform`) is folded into `final_norm` and `b_U`, the two
    things every logit computation here reads besides `W_U`.

    Examples:
        >>> logits, cache = model.run_with_cache(tokens)
        >>> unembed = Unembed.from_model(model)
        >>> unembed
        Unembed(d_model=32, d_vocab=96, norm=..., chunk_size=8192)
        >>> h = cache["blocks.3.hook_resid_post"]  # the last block's output
        >>> torch.allclose(unembed(h), logits, atol=1e-5)  # the model's own logits
        True
        >>> unembed.logsumexp(h, chunk_size=32).shape  # 32 logits at a time
        torch.Size([1, 6])
    """

    def __init__(
        self,
        final_norm: nn.Module,
        W_U: Float[Tensor, "d_model d_vocab"],
        b_U: Float[Tensor, " d_vocab"] | None = None,
        logit_softcap: float | None = None,
        *,
        logit_scale: float = 1.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        adapter: ModelAdapter | None = None,
    ):
        if W_U.ndim != 2:
            raise InputError(f"W_U must be [d_model, d_vocab], got shape {tuple(W_U.shape)}")
        if b_U is not None and b_U.shape != (W_U.shape[1],):
            raise InputError(f"b_U must be [d_vocab={W_U.shape[1]}], got {tuple(b_U.shape)}")
        self.logit_scale = float(logit_scale)
        scaled = self.logit_scale != 1.0
        self.final_norm = _ScaledNorm(final_norm, self.logit_scale) if scaled else final_norm
        self.W_U = W_U
        # Most models have an all-zero b_U; skipping it saves addmm a copy per chunk.
        self.b_U = b_U if b_U is not None and bool(b_U.any()) else None
        if self.b_U is not None and scaled:
            self.b_U = self.b_U * self.logit_scale  # one [d_vocab] copy
        self.logit_softcap = logit_softcap
        self.chunk_size = check_chunk_size(chunk_size)
        self.adapter = adapter

    def __deepcopy__(self, memo: dict) -> Unembed:
        # A view of the model's own tensors: `copy.deepcopy(lens)` copies the lens's
        # parameters and keeps reading the same model, instead of cloning the model.
        return self

    @classmethod
    def from_model(cls, model: nn.Module | ModelAdapter, **kwargs) -> Unembed:
        """The unembedding of a HookedTransformer or TransformerBridge."""
        adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        transform = adapter.output_transform  # refuses a family it cannot read
        return cls(
            adapter.final_norm,
            adapter.W_U,
            adapter.b_U,
            transform.softcap,
            logit_scale=transform.scale,
            adapter=adapter,
            **kwargs,
        )

    def __repr__(self) -> str:
        norm = self.final_norm
        norm = norm.norm if isinstance(norm, _ScaledNorm) else norm
        scale = f", logit_scale={self.logit_scale:g}" if self.logit_scale != 1.0 else ""
        cap = f", softcap={self.logit_softcap}" if self.logit_softcap else ""
        return (
            f"Unembed(d_model={self.d_model}, d_vocab={self.d_vocab}, "
            f"norm={type(norm).__name__}{scale}{cap}, chunk_size={self.chunk_size})"
        )

    @property
    def d_model(self) -> int:
        return int(self.W_U.shape[0])

    @property
    def d_vocab(self) -> int:
        return int(self.W_U.shape[1])

    def unembedding_hash(self) -> str:
        """Hash of the whole unembedding (see `ModelAdapter.unembedding_hash`)."""
        if self.adapter is None:
            raise InputError("this Unembed was built from tensors; build it with from_model()")
        return self.adapter.fingerprint.unembedding_hash

    # --- full logits for one hidden state ----------------------------------------------

    def normalize(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """Apply the model's final norm, and its logit scale if any (validated input)."""
        validate_hidden(h, self.d_model)
        return self.final_norm(h)

    def logits_of_normalized(
        self, normed: Float[Tensor, "... d_model"], vocab: slice = slice(None)
    ) -> Float[Tensor, "... chunk"]:
        """Logits of the tokens in `vocab` for an already normalised hidden state."""
        logits = normed @ self.W_U[:, vocab]
        if self.b_U is not None:
            logits += self.b_U[vocab]
        return self._softcap(logits)

    def token_logits(
        self, normed: Float[Tensor, "rows d_model"], token_ids: Int[Tensor, " rows"]
    ) -> Float[Tensor, " rows"]:
        """The logit of one token per row (`token_ids[i]` for row `i`), without the rest."""
        columns = self.W_U[:, token_ids].T  # [rows, d_model]
        logits = (normed * columns).sum(-1)
        if self.b_U is not None:
            logits = logits + self.b_U[token_ids]
        return self._softcap(logits)

    def _softcap(self, logits: Tensor) -> Tensor:
        if self.logit_softcap:
            return torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def forward(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Logits over the whole vocabulary, exactly as the model computes them."""
        return self.logits_of_normalized(self.normalize(h))

    __call__ = forward

    def log_probs(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Log-softmax over the whole vocabulary (materialises `[..., d_vocab]`)."""
        return torch.log_softmax(self.forward(h), dim=-1)

    def invert(
        self,
        logits: Float[Tensor, "... vocab"],
        *,
        h0: Float[Tensor, "... d_model"] | None = None,
        max_iter: int = 1000,
        optimizer: OptimizerName | str | Enum = "lbfgs",
        prior_weight: float = 0.0,
        prior: torch.distributions.Distribution | None = None,
        step_size: float = 1.0,
        tol: float = 1e-3,
        weight: Tensor | None = None,
    ) -> InversionOutput:
        """Find a hidden state whose logits match `logits`, by minimising KL.

        `hooklens.core.inversion.invert_unembed(self, logits, ...)`, where the objective,
        every argument and the result are described.

        Examples:
            >>> out = unembed.invert(logits[0, -1])
            >>> bool(out.kl < 1e-3), out.preimage.shape
            (True, torch.Size([32]))
        """
        return invert_unembed(
            self,
            logits,
            h0=h0,
            max_iter=max_iter,
            optimizer=optimizer,
            prior_weight=prior_weight,
            prior=prior,
            step_size=step_size,
            tol=tol,
            weight=weight,
        )

    # --- streaming over the vocabulary -------------------------------------------------

    def logit_chunks(
        self, h: Float[Tensor, "... d_model"], chunk_size: int | None = None
    ) -> Iterator[tuple[slice, Float[Tensor, "... chunk"]]]:
        """Yield `(vocab_slice, logits[..., vocab_slice])`, one chunk at a time."""
        normed = self.normalize(h)
        for vocab in vocab_chunks(self.d_vocab, chunk_size or self.chunk_size):
            yield vocab, self.logits_of_normalized(normed, vocab)

    def logsumexp(
        self, h: Float[Tensor, "... d_model"], chunk_size: int | None = None
    ) -> Float[Tensor, "..."]:
        """`logsumexp(logits, -1)` holding one chunk of logits at a time."""
        return logsumexp_chunks(logits for _, logits in self.logit_chunks(h, chunk_size))

    def log_prob_chunks(
        self, h: Float[Tensor, "... d_model"], chunk_size: int | None = None
    ) -> Iterator[tuple[slice, Float[Tensor, "... chunk"]]]:
        """Yield `(vocab_slice, log_probs[..., vocab_slice])` in two passes over W_U.

        The first pass finds the normaliser; the second yields normalised chunks. Costs
        two unembedding matmuls but never more than one chunk of logits in memory.
        """
        lse = self.logsumexp(h, chunk_size)
        for vocab, logits in self.logit_chunks(h, chunk_size):
            yield vocab, logits - lse[..., None]


def check_chunk_size(chunk_size: int) -> int:
    """`chunk_size` if it is a positive int, else an `InputError`."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size
