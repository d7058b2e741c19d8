"""PredictionTrajectory: what a lens predicts at every layer and position, cheaply.

A trajectory keeps where its rows of logits come from (`hooklens.trajectory_sources`:
a lens with references into the cache, no copies, or log-probabilities computed
elsewhere) and small `[layer, position]` arrays. Its constructor makes ONE pass over
position blocks, vocabulary chunks and layers — the unembedding matmul is the whole
cost — and computes every single-trajectory statistic at once: log-sum-exp, entropy,
KL from the model's output, the top-k tokens, and, given targets, the target's
log-prob and rank. `[layers, pos, vocab]` log-probabilities are never materialised;
peak extra memory is a few `[row_block, vocab_chunk]` tiles. Comparisons between two
trajectories (`kl_divergence`, `js_divergence`, `total_variation`) make one more pass
over both, which also keeps the k tokens whose probability changed most (the labels).

Rows are the lens's layers `0..n_layers-1` plus a last "output" row: the model's own
distribution, from the logits passed in (or the last layer row of `from_log_probs`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklens.errors import (
    InputError,
    InputTypeError,
    LensMismatchError,
    NonFiniteActivationError,
)
from hooklens.lenses.base import Lens
from hooklens.model import ModelAdapter, check_same_model, normalize_component
from hooklens.plotting.statistic import TrajectoryLabels, TrajectoryStatistic
from hooklens.plotting.tokens import TokenFormatter
from hooklens.residuals import check_cache, get_residual
from hooklens.stats import LN2
from hooklens.stats.streaming import (
    PairStats,
    ReferenceTile,
    VocabAccumulator,
    VocabStats,
    logsumexp_chunks,
    pair_stats,
)
from hooklens.trajectory_sources import FLOOR, Block, LensSource, LogProbSource, RowSource
from hooklens.validation import (
    TextCutWarning,
    check_id_range,
    layer_index,
    positive_int,
    token_id_tensor,
    tokens_cut_notice,
)

Units = Literal["nats", "bits"]
UNITS = ("nats", "bits")

# Tiles of [ROW_BLOCK, VOCAB_CHUNK] float32 (4 MiB) stay in cache for the ~10
# elementwise passes per tile, and are still big enough for an efficient matmul.
ROW_BLOCK = 256
VOCAB_CHUNK = 4096
# Label defaults of tuned-lens: hover lists 10 tokens; a Δp label needs |Δp| > float32 eps.
LABEL_TOPK = 10
MIN_PROB_DELTA = float(np.finfo(np.float32).eps)


@dataclass
class _Readout:
    """Per-row results of the construction pass; every tensor is `[layer + 1, rows]`."""

    logsumexp: Tensor
    entropy: Tensor
    forward_kl: Tensor
    topk_log_probs: Tensor  # [layer + 1, rows, k]
    topk_ids: Tensor  # [layer + 1, rows, k]
    target_log_prob: Tensor | None
    target_rank: Tensor | None
    anti_target_log_prob: Tensor | None

    def select(self, rows: Tensor) -> _Readout:
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:, rows]

        return _Readout(*(pick(getattr(self, f)) for f in self.__dataclass_fields__))  # type: ignore[arg-type]


def _checked_units(units: Any) -> str:
    if units not in UNITS:
        raise InputError(f"units must be 'nats' or 'bits', got {units!r}")
    return units


def _as_long(ids: Any, name: str) -> Tensor | None:
    return None if ids is None else token_id_tensor(ids, name)


def next_token_targets(
    input_ids: Int[Tensor, "... pos"], attention_mask: Any = None
) -> Int[Tensor, "... pos"]:
    """Each position's next input token as its target; -1 (no target) at the last one
    and, given an `attention_mask`, wherever the next position is padding.

    Examples:
        >>> next_token_targets(torch.tensor([5, 6, 7]))
        tensor([ 6,  7, -1])
        >>> next_token_targets(torch.tensor([5, 6, 0]), attention_mask=torch.tensor([1, 1, 0]))
        tensor([ 6, -1, -1])
    """
    ids = token_id_tensor(input_ids, "input_ids")
    targets = torch.cat([ids[..., 1:], torch.full_like(ids[..., :1], -1)], dim=-1)
    if attention_mask is not None:
        real = _mask_tensor(attention_mask, ids.shape)
        next_real = torch.cat([real[..., 1:], torch.zeros_like(real[..., :1])], dim=-1)
        targets = targets.masked_fill(~next_real, -1)
    return targets


def _mask_tensor(
    attention_mask: Any,
    shape: tuple[int, ...],
    name: str = "attention_mask",
    ids_name: str = "input_ids",
) -> Tensor:
    """`attention_mask` (1 = real token, 0 = padding) as a bool tensor of `shape`."""
    try:
        mask = torch.as_tensor(attention_mask).detach().cpu()
    except (ValueError, TypeError, RuntimeError):
        raise InputError(f"{name} must be a [..., pos] array of 1s and 0s") from None
    if tuple(mask.shape) != tuple(shape):
        raise InputError(
            f"{name} is {tuple(mask.shape)}, but {ids_name} are {tuple(shape)}: "
            "give one entry per token (1 = real, 0 = padding)"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError(f"{name} must hold 1 (real token) or 0 (padding) only")
    return mask.bool()


def infer_padding(input_ids: Tensor, tokenizer: Any, prepend_bos: bool = False) -> Tensor | None:
    """The attention mask of a batch TransformerLens padded (`model.to_tokens([...])`,
    on either side), or None when nothing in it looks like padding.

    Pads are the tokenizer's pad tokens at one end of a sequence (TransformerLens's own
    `get_attention_mask`, which keeps a BOS that shares the pad id). A batch counts as
    padded on a side only if some sequence has no pad there (the longest, which
    `to_tokens` never pads): a batch whose sequences all end in the pad token (often
    the EOS) keeps every token. The tokenizer's `padding_side` is tried first.
    """
    if tokenizer is None or getattr(tokenizer, "pad_token_id", None) is None:
        return None
    rows = input_ids.reshape(-1, input_ids.shape[-1])
    if rows.shape[0] < 2:
        return None
    from transformer_lens.utilities import get_attention_mask

    first = getattr(tokenizer, "padding_side", "right")
    for side in (first, "left" if first == "right" else "right"):
        mask = get_attention_mask(tokenizer, rows, prepend_bos, padding_side=side).bool()
        padded_rows = ~mask.all(dim=-1)
        if bool(padded_rows.any()) and not bool(padded_rows.all()):
            return mask.reshape(input_ids.shape)
    return None


def model_padding(ids: Tensor, adapter: ModelAdapter, tokenizer: Any = None) -> Tensor | None:
    """The attention mask of the padding `adapter`'s model added to a batch of `ids`
    (`infer_padding` with its tokenizer, or `tokenizer`, and its BOS setting), or None.

    What every reader of a model's token batches assumes when not given a mask.
    """
    if ids.ndim < 2:
        return None
    prepend_bos = bool(getattr(adapter.cfg, "default_prepend_bos", False))
    return infer_padding(ids, tokenizer or adapter.tokenizer, prepend_bos)


def checked_attention_mask(
    ids: Tensor,
    attention_mask: Any,
    adapter: ModelAdapter,
    *,
    name: str = "attention_mask",
    ids_name: str = "input_ids",
) -> Tensor | None:
    """`attention_mask` as a bool tensor shaped like `ids` (checked: 1s and 0s; `name`
    and `ids_name` name both in errors), or when None the padding `adapter`'s model
    added (`model_padding`), or None."""
    if attention_mask is not None:
        return _mask_tensor(attention_mask, tuple(ids.shape), name, ids_name)
    return model_padding(ids, adapter)


def _check_logits_match(
    lens: Lens, final: Float[Tensor, "... pos d_model"], model_logits: Tensor
) -> None:
    """The model's logits must be what its unembedding reads from the final residual.

    Checked on the last position of each sequence (one `[batch, vocab]` matmul), as
    log-probabilities, with a tolerance far above rounding (kernels, dtypes) and far
    below what logits of another model or another run differ by.
    """
    if final.shape[:-1] != model_logits.shape[:-1] or final.shape[-2] == 0:
        return  # the shape checks of the constructor say what is wrong
    if model_logits.shape[-1] != lens.unembed.d_vocab:
        return
    with torch.no_grad():
        h = final[..., -1, :].reshape(-1, final.shape[-1])
        ours = torch.log_softmax(lens.unembed(h).double(), dim=-1)
        theirs = torch.log_softmax(
            model_logits[..., -1, :].reshape(-1, model_logits.shape[-1]).double(), dim=-1
        ).to(ours.device)
    if not bool(torch.isfinite(theirs).any(dim=-1).all()):
        return  # NaN logits: the constructor's check names them
    low_precision = model_logits.dtype in (torch.float16, torch.bfloat16)
    tolerance = (0.05 if low_precision else 0.01) * (1 + theirs.abs().max().item())
    gap = (ours - theirs).abs().nan_to_num(nan=0.0, posinf=0.0).max().item()
    if gap > tolerance:
        raise LensMismatchError(
            "model_logits are not what the lens's model reads from this cache's final "
            f"residual (log-probabilities differ by up to {gap:.3g}): are the logits and "
            "the cache from the same run of the lens's model? (If hooks changed the final "
            "norm or the unembedding on purpose, pass check_logits=False.)"
        )


class PredictionTrajectory:
    """Next-token predictions of a lens at every layer and position of some input.

    Build one with `from_lens_and_cache` (after your own `model.run_with_cache`) or
    `from_lens_and_model`, or from log-probabilities computed elsewhere with
    `from_log_probs`. Statistics come back as `TrajectoryStatistic` objects shaped
    `[..., layer, pos]` (leading batch axes kept), ready for `.figure()`.

    Labels (given a tokenizer), as in tuned-lens: each cell of a single-trajectory
    statistic shows the top-1 token of that layer where its probability is at least
    `min_prob` (blank elsewhere), and hovering lists the `topk` most likely tokens —
    at most the `topk` this trajectory kept when it was built (5 by default; build it
    with `topk=10` to list tuned-lens's ten). Comparisons (`kl_divergence`,
    `js_divergence`, `total_variation`) label each cell with the token whose
    probability changed most from self to other, where |Δp| ≥ `min_prob_delta`, and
    hover lists the `topk` largest changes with their signed Δp. With a batch, a cell
    shows its label where every sequence agrees (`*` where they differ) and the hover
    describes the first sequence.

    Examples:
        >>> logits, cache = model.run_with_cache(tokens)                 # doctest: +SKIP
        >>> traj = PredictionTrajectory.from_lens_and_cache(
        ...     lens, tokens, cache, logits, targets=next_token_targets(tokens))
        ...                                                              # doctest: +SKIP
        >>> traj.entropy(min_prob=0.1).figure()                          # doctest: +SKIP
    """

    def __init__(
        self,
        lens: Lens,
        residuals: Sequence[Float[Tensor, "... pos d_model"]],
        model_logits: Float[Tensor, "... pos vocab"],
        input_ids: Int[Tensor, "... pos"],
        *,
        targets: Int[Tensor, "... pos"] | None = None,
        anti_targets: Int[Tensor, "... pos"] | None = None,
        tokenizer: Any = None,
        mask_input: bool = False,
        residual_component: str | None = None,
        topk: int = 5,
        attention_mask: Any = None,
    ):
        if not isinstance(lens, Lens):
            raise InputTypeError(f"lens must be a hooklens Lens, got {type(lens).__name__}")
        component = _lens_component(lens, residual_component)
        ids = _input_ids(input_ids)
        source = LensSource(lens, residuals, model_logits, tuple(ids.shape), component)
        self._setup(
            source,
            ids,
            targets=targets,
            anti_targets=anti_targets,
            tokenizer=tokenizer,
            mask_input=mask_input,
            topk=topk,
            attention_mask=attention_mask,
        )

    def _setup(
        self,
        source: RowSource,
        input_ids: Tensor,
        *,
        targets: Any,
        anti_targets: Any,
        tokenizer: Any,
        mask_input: bool,
        topk: int,
        attention_mask: Any,
        readout: _Readout | None = None,
    ) -> None:
        """Everything a trajectory holds, whatever its source; runs the streaming pass
        unless `readout` (of the same rows, from `slice_sequence`) is given."""
        self._source = source
        self.lens: Lens | None = source.lens if isinstance(source, LensSource) else None
        self.residual_component: str | None = (
            source.component if isinstance(source, LensSource) else None
        )
        self.input_ids = input_ids
        self.targets = _as_long(targets, "targets")
        self.anti_targets = _as_long(anti_targets, "anti_targets")
        self.tokenizer = tokenizer
        self.mask_input = mask_input
        self.topk = positive_int(topk, "topk", at_most=source.vocab_size)
        self._validate()
        # 1 = a real token, 0 = padding (its cells are NaN and left out of every mean).
        self.attention_mask: Tensor | None = (
            None if attention_mask is None else _mask_tensor(attention_mask, self.input_ids.shape)
        )
        self._drop_targets_in_padding()
        self._pairs: weakref.WeakKeyDictionary[PredictionTrajectory, PairStats] = (
            weakref.WeakKeyDictionary()
        )
        self._labels: dict[tuple[float, int], TrajectoryLabels] = {}
        if readout is None:
            with torch.no_grad():
                readout = self._read()
        self._readout = readout

    @classmethod
    def _from_source(
        cls, source: RowSource, input_ids: Tensor, **settings: Any
    ) -> PredictionTrajectory:
        trajectory = cls.__new__(cls)
        trajectory._setup(source, input_ids, **settings)
        return trajectory

    # --- constructors ---------------------------------------------------------------

    @classmethod
    def from_lens_and_cache(
        cls,
        lens: Lens,
        input_ids: Int[Tensor, "... pos"],
        cache: Any,
        model_logits: Float[Tensor, "... pos vocab"],
        targets: Int[Tensor, "... pos"] | None = None,
        anti_targets: Int[Tensor, "... pos"] | None = None,
        residual_component: str | None = None,
        mask_input: bool = False,
        topk: int = 5,
        attention_mask: Any = None,
        check_logits: bool = True,
    ) -> PredictionTrajectory:
        """A trajectory from a TransformerLens `ActivationCache` and the model's logits.

        Args:
            lens: the lens to read each layer with.
            input_ids: `[..., pos]` the tokens the model was run on.
            cache: the `ActivationCache` of that run (it must hold the residual hooks).
            model_logits: `[..., pos, vocab]` the model's logits from the same run.
            targets: `[..., pos]` token ids to score (cross-entropy, rank, log-prob
                difference); -1 marks a position without a target.
                `next_token_targets(input_ids)` scores the next input token.
            anti_targets: `[..., pos]` token ids to compare targets against.
            residual_component: `"resid_pre"`, `"resid_mid"` or `"resid_post"`; default
                the lens's own `component` (`"resid_pre"` unless the lens was made for
                another, like a `resid_post` Jacobian lens).
            mask_input: give every token of each input sequence probability 0 at the
                lens rows (not the output row), to see what else the lens predicts.
            topk: how many most likely tokens to keep per cell, for labels and hover.
            attention_mask: `[..., pos]` 1 for real tokens, 0 for padding. Padded cells
                are NaN in every statistic and left out of means; a target pointing at
                padding counts as none. Default: the padding TransformerLens added to a
                batch (`model.to_tokens([...])`, pad tokens at the tokenizer's padding
                side), if any; pass `torch.ones_like(input_ids)` to keep every token.
            check_logits: check that `model_logits` are what the model's unembedding
                reads from the cache's final residual (catches logits of another run or
                model). Turn it off only if hooks edited the final norm or unembedding.

        Raises:
            LensMismatchError: the cache or the logits come from another model than the
                lens's (sizes, weights of the unembedding, or an extra block).
        """
        component = _lens_component(lens, residual_component)
        adapter = lens.adapter
        check_cache(adapter, cache)
        ids = _as_long(input_ids, "input_ids")
        residuals = [
            get_residual(cache, layer, component, adapter) for layer in range(lens.n_layers)
        ]
        if check_logits and isinstance(model_logits, Tensor):
            final = get_residual(cache, lens.n_layers, component, adapter)
            _check_logits_match(lens, final, model_logits)
        tokenizer = getattr(getattr(cache, "model", None), "tokenizer", None) or adapter.tokenizer
        if attention_mask is None and ids is not None:
            attention_mask = model_padding(ids, adapter, tokenizer)
        return cls(
            lens,
            residuals,
            model_logits,
            input_ids,
            targets=targets,
            anti_targets=anti_targets,
            tokenizer=tokenizer,
            mask_input=mask_input,
            residual_component=component,
            topk=topk,
            attention_mask=attention_mask,
        )

    @classmethod
    def from_lens_and_model(
        cls,
        lens: Lens,
        model: Any,
        input_ids: Int[Tensor, "... pos"] | Sequence[int] | str,
        tokenizer: Any = None,
        targets: Int[Tensor, "... pos"] | Sequence[int] | None = None,
        anti_targets: Int[Tensor, "... pos"] | Sequence[int] | None = None,
        mask_input: bool = False,
        residual_component: str | None = None,
        topk: int = 5,
        fwd_hooks: Sequence[tuple[Any, Any]] = (),
        attention_mask: Any = None,
    ) -> PredictionTrajectory:
        """Run `model` on `input_ids` (ids, or a string to tokenize) and build a trajectory.

        Only the residual hooks the lens reads are cached. `fwd_hooks` (TransformerLens
        `(name, fn)` pairs, e.g. from `hooklens.causal.interventions`) are active during the run,
        and so are hooks the caller added with `with model.hooks(...)`; the lens reads
        the residuals as the hooks left them. `attention_mask` (1 = token, 0 = padding)
        is passed to the model and to the trajectory; by default it is the padding
        TransformerLens added, if any (see `from_lens_and_cache`).

        A text longer than the model's context (`n_ctx` tokens) is cut to its first
        `n_ctx` tokens with a `hooklens.validation.TextCutWarning` that says how many were
        dropped, as `trajectory_report` does; token ids longer than that are refused.
        """
        adapter = ModelAdapter(model)
        if lens.adapter.model is not model:
            check_same_model(lens.adapter, model, "this model")
        if isinstance(input_ids, str):
            if not input_ids:
                raise InputError("the text is empty: pass at least one token's worth of text")
            if adapter.tokenizer is None:
                raise InputError(
                    "this model has no tokenizer, so it cannot read text: pass token ids, "
                    "or set model.set_tokenizer(tokenizer)"
                )
            text = input_ids
            text_ids: Tensor = model.to_tokens(text, truncate=False)[0]
            n_ctx = getattr(adapter.cfg, "n_ctx", None)
            if n_ctx and text_ids.shape[-1] > n_ctx:
                # The report's notice, so both say a cut the same way.
                notice = tokens_cut_notice(text_ids.shape[-1], n_ctx, n_ctx)
                dropped = text_ids.shape[-1] - n_ctx
                warnings.warn(
                    f"{notice}: the last {dropped} tokens are not "
                    f"read. Split the text into pieces of at most {n_ctx} tokens to read "
                    "them all, or pass the token ids you mean to read",
                    TextCutWarning,
                    stacklevel=2,
                )
                text_ids = text_ids[:n_ctx]
            input_ids = text_ids
        ids = _as_long(input_ids, "input_ids")
        assert ids is not None
        if ids.ndim == 0 or ids.numel() == 0:
            raise InputError(
                f"input_ids must be [..., pos] with at least one token, got {tuple(ids.shape)}"
            )
        check_id_range(ids, "input_ids", int(adapter.cfg.d_vocab), allow_missing=False)
        n_ctx = getattr(adapter.cfg, "n_ctx", None)
        if n_ctx and ids.shape[-1] > n_ctx:
            raise InputError(
                f"input_ids hold {ids.shape[-1]} positions, more than the model's context "
                f"of n_ctx={n_ctx} tokens: cut them (input_ids[..., :{n_ctx}]) or split "
                "the text"
            )
        component = _lens_component(lens, residual_component)
        names = adapter.residual_hook_names(component)
        hooks = model.hooks(fwd_hooks=list(fwd_hooks)) if fwd_hooks else contextlib.nullcontext()
        run_ids = ids if ids.ndim > 1 else ids[None]
        extra = {}
        if attention_mask is not None:
            mask = _mask_tensor(attention_mask, tuple(ids.shape))
            extra["attention_mask"] = mask.reshape(run_ids.shape).long().to(adapter.device)
        with torch.no_grad(), hooks:
            logits, cache = model.run_with_cache(
                run_ids.to(adapter.device), names_filter=lambda name: name in names, **extra
            )
        if ids.ndim == 1:
            logits = logits[0]
            cache = cache.remove_batch_dim()
        trajectory = cls.from_lens_and_cache(
            lens,
            ids,
            cache,
            logits,
            targets=targets,  # type: ignore[arg-type]
            anti_targets=anti_targets,  # type: ignore[arg-type]
            residual_component=component,
            mask_input=mask_input,
            topk=topk,
            attention_mask=attention_mask,
        )
        if tokenizer is not None:
            trajectory.tokenizer = tokenizer
        return trajectory

    @classmethod
    def from_log_probs(
        cls,
        log_probs: Float[Tensor, "... layer_and_output pos vocab"] | np.ndarray,
        input_ids: Int[Tensor, "... pos"] | Sequence[int],
        targets: Int[Tensor, "... pos"] | Sequence[int] | None = None,
        anti_targets: Int[Tensor, "... pos"] | Sequence[int] | None = None,
        tokenizer: Any = None,
        *,
        topk: int = 5,
        attention_mask: Any = None,
    ) -> PredictionTrajectory:
        """A trajectory of distributions computed elsewhere, e.g. tuned-lens's own
        `PredictionTrajectory.log_probs`, or another library's lens.

        `log_probs` is `[..., layer + 1, pos, vocab]` as in tuned-lens: batch axes
        first (those of `input_ids`), then one row per layer and a LAST row for the
        model's output distribution (forward KL is measured from it). Logits work as
        well as log-probabilities: each row is normalised with a log-softmax, in the
        same streaming pass as a lens-built trajectory, so every statistic, label,
        figure, `slice_sequence`, `top_predictions`, `layer_log_probs` and comparison
        (with any trajectory of the same shape, lens-built or not) works the same way.
        The tensor is read, never copied whole nor written (change it in place and the
        trajectory refuses to go on); `-inf` entries are probability 0.

        Args:
            log_probs: `[..., layer + 1, pos, vocab]` float tensor or numpy array.
            input_ids: `[..., pos]` the input tokens (labels of the x axis).
            targets: `[..., pos]` token ids to score, -1 where none.
            anti_targets: `[..., pos]` token ids to compare targets against.
            tokenizer: turns ids into labels; without one, figures have no token labels.
            topk: how many most likely tokens to keep per cell.
            attention_mask: `[..., pos]` 1 for real tokens, 0 for padding (nothing is
                inferred: pass it for a padded batch). Without one, a position whose
                rows are all zero (padding) is refused, not read as a uniform
                distribution.

        Raises:
            InputError: a shape that does not fit `input_ids` (with the axis to move if
                the layer axis comes first), probabilities instead of their logarithm
                (at any position: rows of zeros are padding), padding without an
                `attention_mask`, or ids outside the vocabulary.
            NonFiniteActivationError: NaN or +inf, or a row with no finite entry.

        Examples:
            >>> log_probs = torch.randn(4, 3, 10).log_softmax(-1)  # 3 layers + output
            >>> traj = PredictionTrajectory.from_log_probs(
            ...     log_probs, input_ids=[1, 2, 3], targets=[2, 3, -1])
            >>> traj
            PredictionTrajectory(layers=3, pos=3, source=log_probs[float32], targets=yes)
            >>> traj.cross_entropy().stats.shape
            (4, 3)
        """
        ids = _input_ids(input_ids)
        padding = None if attention_mask is None else ~_mask_tensor(attention_mask, ids.shape)
        source = LogProbSource(log_probs, tuple(ids.shape), padding=padding)
        return cls._from_source(
            source,
            ids,
            targets=targets,
            anti_targets=anti_targets,
            tokenizer=tokenizer,
            mask_input=False,
            topk=topk,
            attention_mask=attention_mask,
        )

    # --- shape and checks -------------------------------------------------------------

    def _validate(self) -> None:
        ids = self.input_ids
        check_id_range(ids, "input_ids", self.vocab_size, allow_missing=False)
        for name in ("targets", "anti_targets"):
            value = getattr(self, name)
            if value is None:
                continue
            if value.shape != ids.shape:
                raise InputError(
                    f"{name} are {tuple(value.shape)}, but input_ids are {tuple(ids.shape)}: "
                    f"give one {name[:-1].replace('_', '-')} id per position, -1 where there "
                    "is none (next_token_targets(input_ids) scores the next token)"
                )
            check_id_range(value, name, self.vocab_size, allow_missing=True)

    def _drop_targets_in_padding(self) -> None:
        """Padded positions have no target, and neither does a position whose target is
        the padding after it (`next_token_targets` of a right-padded batch)."""
        mask = self.attention_mask
        if mask is None or bool(mask.all()):
            return
        next_ids = torch.cat([self.input_ids[..., 1:], self.input_ids[..., -1:]], dim=-1)
        next_real = torch.cat([mask[..., 1:], torch.ones_like(mask[..., -1:])], dim=-1)
        if self.targets is not None:
            into_padding = ~next_real & (self.targets == next_ids)
            self.targets = self.targets.masked_fill(~mask | into_padding, -1)
        if self.anti_targets is not None:
            self.anti_targets = self.anti_targets.masked_fill(~mask, -1)

    def _check_lens_unchanged(self) -> None:
        self._source.check_unchanged()

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.input_ids.shape[:-1])

    @property
    def n_batch_axis(self) -> int:
        return len(self.batch_shape)

    @property
    def num_layers(self) -> int:
        """Layers read by the lens, not counting the output row."""
        return self._source.n_layers

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[-1])

    @property
    def vocab_size(self) -> int:
        return self._source.vocab_size

    def _layer_index(self, layer: int) -> int:
        """`layer` as a row `0..num_layers` (negative counts from the end: -1 = output)."""
        return layer_index(layer, self.num_layers)

    def __repr__(self) -> str:
        batch = f", batch={self.batch_shape}" if self.batch_shape else ""
        extras = "".join(
            f", {name}=yes"
            for name in ("targets", "anti_targets")
            if getattr(self, name) is not None
        )
        if (padding := self._padding()) is not None:
            extras += f", padded_positions={int(padding.sum())}"
        return (
            f"PredictionTrajectory(layers={self.num_layers}, pos={self.num_tokens}{batch}, "
            f"{self._source.describe()}{extras})"
        )

    # --- the streaming pass -----------------------------------------------------------

    def _rows(self) -> int:
        return self.input_ids.numel()

    def _flat_ids(self, ids: Tensor | None) -> Tensor | None:
        return None if ids is None else ids.reshape(-1).to(self._source.device)

    def _input_mask(self) -> Tensor | None:
        """`[sequence, vocab]`: the tokens of each input sequence, or None (no masking).

        One row per sequence, not per position: `_sequence_mask` picks rows on demand.
        """
        if not self.mask_input:
            return None
        ids = self.input_ids.reshape(-1, self.num_tokens)
        mask = torch.zeros(ids.shape[0], self.vocab_size, dtype=torch.bool)
        return mask.scatter_(1, ids, True)

    def _sequence_mask(self, mask: Tensor, rows: slice) -> Tensor:
        """`[rows, vocab]` view of the per-sequence mask for a block of flat rows."""
        return mask[torch.arange(rows.start, rows.stop) // self.num_tokens]

    def _vocab_chunks(self) -> list[slice]:
        return [
            slice(v, min(v + VOCAB_CHUNK, self.vocab_size))
            for v in range(0, self.vocab_size, VOCAB_CHUNK)
        ]

    def _blocks(self) -> list[slice]:
        n_rows = self._rows()
        return [slice(r, min(r + ROW_BLOCK, n_rows)) for r in range(0, n_rows, ROW_BLOCK)]

    def _tile(self, block: Block, vocab: slice, block_mask: Tensor | None) -> Tensor:
        """Float32 logits of a block (see `RowSource.tile`); with `mask_input`, the
        input's tokens at the finite floor in every row but the output."""
        logits = self._source.tile(block, vocab)
        if block_mask is not None and block.layer < self.num_layers:
            logits.masked_fill_(block_mask[:, vocab].to(logits.device), FLOOR)
        return logits

    def _tiles(self, block: Block, mask: Tensor | None) -> Iterator[tuple[slice, Tensor]]:
        block_mask = None if mask is None else self._sequence_mask(mask, block.rows)
        for vocab in self._vocab_chunks():
            yield vocab, self._tile(block, vocab, block_mask)

    def _token_logits(self, block: Block, ids: Tensor, block_mask: Tensor | None) -> Tensor:
        """The logit of `ids` (one per row; negative = none, read as token 0)."""
        ids = ids.clamp_min(0)
        logits = self._source.token_logits(block, ids)
        if block_mask is None or block.layer == self.num_layers:
            return logits
        hidden = block_mask.gather(1, ids.cpu()[:, None])[:, 0]
        return logits.masked_fill(hidden.to(logits.device), FLOOR)

    def _read(self) -> _Readout:
        """The construction pass: row blocks × vocabulary chunks × layers.

        Layers are the innermost loop so each chunk of the output distribution (the
        reference of every forward KL) is exponentiated once, not once per layer.
        """
        n_layers = self.num_layers
        targets, anti = self._flat_ids(self.targets), self._flat_ids(self.anti_targets)
        mask = self._input_mask()
        results: list[list[VocabStats]] = [[] for _ in range(n_layers + 1)]
        target_logits: list[list[Tensor]] = [[] for _ in range(n_layers + 1)]
        anti_logits: list[list[Tensor]] = [[] for _ in range(n_layers + 1)]
        vocab_chunks = self._vocab_chunks()
        for rows in self._blocks():
            block_mask = None if mask is None else self._sequence_mask(mask, rows)
            blocks = [self._source.block(layer, rows) for layer in range(n_layers + 1)]
            output = blocks[-1]
            row_targets = None if targets is None else targets[rows]
            accumulators = []
            for layer, block in enumerate(blocks):
                zt = None
                if row_targets is not None:
                    zt = self._token_logits(block, row_targets, block_mask)
                    target_logits[layer].append(zt)
                if anti is not None:
                    anti_logits[layer].append(self._token_logits(block, anti[rows], block_mask))
                accumulators.append(VocabAccumulator(self.topk, row_targets, zt))
            out_lse = logsumexp_chunks(self._source.tile(output, v) for v in vocab_chunks)
            if not bool(torch.isfinite(out_lse).all()):
                raise NonFiniteActivationError(
                    "model_logits hold NaN or +inf, or a position where every logit is -inf"
                )
            for vocab in vocab_chunks:
                out = self._source.tile(output, vocab)
                reference = ReferenceTile.from_log_probs(out - out_lse[:, None])
                for layer, block in enumerate(blocks):
                    logits = out if block is output else self._tile(block, vocab, block_mask)
                    accumulators[layer].update(vocab, logits, reference)
            for layer, accumulator in enumerate(accumulators):
                results[layer].append(accumulator.finish())
        return self._assemble(results, target_logits, anti_logits, targets, anti)

    @staticmethod
    def _assemble(
        per_layer: list[list[VocabStats]],
        target_logits: list[list[Tensor]],
        anti_logits: list[list[Tensor]],
        targets: Tensor | None,
        anti: Tensor | None,
    ) -> _Readout:
        def stack(field: str) -> Tensor:
            return torch.stack(
                [torch.cat([getattr(s, field) for s in blocks]) for blocks in per_layer]
            ).cpu()

        lse = stack("logsumexp")

        def log_prob_of(logits: list[list[Tensor]], ids: Tensor | None) -> Tensor | None:
            if ids is None:
                return None
            values = torch.stack([torch.cat(blocks) for blocks in logits]).cpu() - lse
            return torch.where(ids.cpu() >= 0, values, torch.full_like(values, math.nan))

        return _Readout(
            logsumexp=lse,
            entropy=stack("entropy"),
            forward_kl=stack("reference_kl"),
            topk_log_probs=torch.stack(
                [torch.cat([s.topk_log_probs for s in blocks]) for blocks in per_layer]
            ).cpu(),
            topk_ids=stack("topk_ids"),
            target_log_prob=log_prob_of(target_logits, targets),
            target_rank=None if targets is None else stack("target_rank"),
            anti_target_log_prob=log_prob_of(anti_logits, anti),
        )

    # --- slicing --------------------------------------------------------------------------

    def slice_sequence(self, positions: slice) -> PredictionTrajectory:
        """The same trajectory restricted to `positions` (no recomputation)."""
        if not isinstance(positions, slice):
            raise InputTypeError(
                f"slice_sequence takes a slice such as slice(2, 10), got {type(positions).__name__}"
            )
        if positions.step is not None and positions.step < 1:
            raise InputError(
                f"slice_sequence needs a positive step (positions stay in order), got {positions}"
            )
        index = torch.arange(self._rows()).reshape(self.input_ids.shape)[..., positions]
        if index.numel() == 0:
            raise InputError(f"{positions} selects no positions of {self.num_tokens}")

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[..., positions]

        return self._from_source(
            self._source.select_positions(positions),
            self.input_ids[..., positions],
            targets=cut(self.targets),
            anti_targets=cut(self.anti_targets),
            tokenizer=self.tokenizer,
            mask_input=self.mask_input,
            topk=self.topk,
            attention_mask=cut(self.attention_mask),
            readout=self._readout.select(index.reshape(-1)),
        )

    def top_predictions(
        self,
    ) -> tuple[Int[Tensor, "... layer pos k"], Float[Tensor, "... layer pos k"]]:
        """The `topk` most likely tokens at each layer and position, most likely first:
        `(token_ids, probabilities)`, each `[..., layer + 1, pos, topk]`."""

        def shaped(values: Tensor) -> Tensor:
            grid = values.reshape(values.shape[0], *self.batch_shape, self.num_tokens, -1)
            return grid.movedim(0, -3)

        return shaped(self._readout.topk_ids), shaped(self._readout.topk_log_probs.exp())

    def layer_log_probs(self, layer: int) -> Float[Tensor, "... pos vocab"]:
        """Full log-probabilities of one row (`-1` = output): `[..., pos, vocab]`."""
        layer = self._layer_index(layer)
        self._check_lens_unchanged()
        with torch.no_grad():
            logits = self._source.full_row(layer)
            mask = self._input_mask()
            if mask is not None and layer < self.num_layers:
                rows = self._sequence_mask(mask, slice(0, self._rows()))
                logits = logits.masked_fill(rows.to(logits.device), -math.inf)
            log_probs = torch.log_softmax(logits, dim=-1)
        return log_probs.reshape(*self.batch_shape, self.num_tokens, -1)

    # --- statistics -----------------------------------------------------------------------

    def _to_stat(self, values: Tensor) -> np.ndarray:
        """`[layer + 1, rows]` → `[..., layer + 1, pos]` numpy; NaN at padded cells."""
        values = values.float()
        if self.attention_mask is not None:
            padded = ~self.attention_mask.reshape(-1)
            values = values.masked_fill(padded[None, : values.shape[1]], math.nan)
        shaped = values.reshape(values.shape[0], *self.batch_shape, self.num_tokens)
        return shaped.movedim(0, -2).numpy()

    def _padding(self) -> np.ndarray | None:
        """`[..., pos]` True at padded positions, or None without padding."""
        if self.attention_mask is None or bool(self.attention_mask.all()):
            return None
        return (~self.attention_mask).numpy()

    def _statistic(
        self,
        name: str,
        values: Tensor,
        units: str,
        labels: TrajectoryLabels | None,
        **kw: Any,
    ) -> TrajectoryStatistic:
        stats = self._to_stat(values)
        if units == "bits":
            stats = stats / LN2
            for bound in ("min", "max"):
                if kw.get(bound) is not None:
                    kw[bound] = kw[bound] / LN2
        return TrajectoryStatistic(
            name=name,
            stats=stats,
            units=units,
            sequence_labels=self._sequence_labels(),
            sequence_tokens=self._sequence_labels(TokenFormatter(max_string_len=None)),
            trajectory_labels=labels,
            padding=self._padding(),
            **kw,
        )

    def _need(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise InputError(
                f"this statistic needs {' and '.join(missing)}: pass them when building the "
                "trajectory (next_token_targets(input_ids) scores the next input token)"
            )

    def entropy(
        self,
        units: Units = "nats",
        *,
        min_prob: float = 0.0,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """Entropy of each layer's prediction.

        Args:
            units: `"nats"` or `"bits"`.
            min_prob: a cell shows its top-1 token only where that token's probability
                is at least this (blank elsewhere).
            topk: how many of the most likely tokens the hover lists; at most the
                `topk` the trajectory kept when built (`traj.topk`; build with a larger
                `topk=` to list more).
            formatter: how tokens are written (default `TokenFormatter()`).

        The other single-trajectory statistics take the same label options.
        """
        return self._statistic(
            "Entropy",
            self._readout.entropy,
            _checked_units(units),
            self._top_prediction_labels(min_prob, topk, formatter),
            min=0.0,
        )

    def forward_kl(
        self,
        units: Units = "nats",
        *,
        min_prob: float = 0.0,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """KL(output ‖ layer): how far each layer's prediction is from the model's.

        Label options as in `entropy`."""
        return self._statistic(
            "Forward KL",
            self._readout.forward_kl,
            _checked_units(units),
            self._top_prediction_labels(min_prob, topk, formatter),
            min=0.0,
        )

    def cross_entropy(
        self,
        units: Units = "nats",
        *,
        min_prob: float = 0.0,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """`-log p(target)` at each layer (NaN where a position has no target).

        Label options as in `entropy`."""
        self._need("targets")
        assert self._readout.target_log_prob is not None
        return self._statistic(
            "Cross Entropy",
            -self._readout.target_log_prob,
            _checked_units(units),
            self._top_prediction_labels(min_prob, topk, formatter),
            min=0.0,
        )

    def rank(
        self,
        show_ranks: bool = False,
        *,
        min_prob: float = 0.0,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """1-based rank of the target among each layer's predictions (1 = top).

        With `show_ranks`, the cells show the rank instead of the top prediction (and
        `min_prob` does not apply); the hover still lists the top tokens. Label options
        as in `entropy`.
        """
        self._need("targets")
        assert self._readout.target_rank is not None
        ranks = self._readout.target_rank.float()
        ranks[ranks == 0] = math.nan  # positions without a target
        labels = self._top_prediction_labels(min_prob, topk, formatter)
        stat = self._statistic("Rank", ranks, "", labels, min=1.0, max=float(self.vocab_size))
        if show_ranks and stat.trajectory_labels is not None:
            matrix = stat.matrix
            text = np.where(np.isnan(matrix), "", np.char.mod("%d", np.nan_to_num(matrix)))
            stat.trajectory_labels = replace(stat.trajectory_labels, label_strings=text)
        return stat

    def max_probability(
        self,
        *,
        min_prob: float = 0.0,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """Probability of each layer's most likely token. Label options as in `entropy`."""
        top = self._readout.topk_log_probs[..., 0].exp()
        return self._statistic(
            "Max Probability",
            top,
            "probs",
            self._top_prediction_labels(min_prob, topk, formatter),
            min=0.0,
            max=1.0,
        )

    def log_prob_diff(
        self,
        delta: bool = False,
        units: Units = "nats",
        *,
        min_prob: float = 0.0,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """`log p(target) - log p(anti_target)` per layer; `delta`: change from the layer below.

        Label options as in `entropy`; the `delta` rows lie between two layers and
        have no labels."""
        self._need("targets", "anti_targets")
        assert self._readout.target_log_prob is not None
        assert self._readout.anti_target_log_prob is not None
        diff = self._readout.target_log_prob - self._readout.anti_target_log_prob
        if not delta:
            labels = self._top_prediction_labels(min_prob, topk, formatter)
            return self._statistic("Log Prob Difference", diff, _checked_units(units), labels)
        _probability(min_prob, "min_prob"), positive_int(topk, "topk")  # refused all the same
        steps = [f"{i}→{i + 1}" for i in range(self.num_layers - 1)]
        return self._statistic(
            "Δ Log Prob Difference",
            diff[1:] - diff[:-1],
            _checked_units(units),
            None,
            layer_labels=np.array([*steps, f"{self.num_layers - 1}→output"]),
        )

    # --- comparisons -------------------------------------------------------------------

    def _compatible(self, other: PredictionTrajectory) -> None:
        if not isinstance(other, PredictionTrajectory):
            raise InputTypeError(
                f"compare with another PredictionTrajectory, got {type(other).__name__}"
            )
        if (self.num_layers, self.num_tokens, self.batch_shape, self.vocab_size) != (
            other.num_layers,
            other.num_tokens,
            other.batch_shape,
            other.vocab_size,
        ):
            raise InputError(
                "trajectories must have the same layers, positions, batch and vocabulary: "
                f"{self!r} vs {other!r}"
            )

    def _pair(self, other: PredictionTrajectory, delta_k: int = 0) -> PairStats:
        """The pair pass with `other` (cached), keeping at least `delta_k` largest Δp."""
        self._compatible(other)
        self._check_lens_unchanged()
        other._check_lens_unchanged()
        delta_k = min(delta_k, self.vocab_size)
        cached = self._pairs.get(other)
        if cached is None or cached.delta_k < delta_k:
            with torch.no_grad():
                self._pairs[other] = self._read_pair(other, delta_k)
        return self._pairs[other]

    def _read_pair(self, other: PredictionTrajectory, delta_k: int) -> PairStats:
        """One pass over both trajectories: row blocks × layers × vocabulary chunks."""
        n_layers = self.num_layers
        mask_a, mask_b = self._input_mask(), other._input_mask()
        device = self._source.device
        lse_a = self._readout.logsumexp.to(device)
        lse_b = other._readout.logsumexp.to(device)
        results: list[list[PairStats]] = [[] for _ in range(n_layers + 1)]
        for rows in self._blocks():
            for layer in range(n_layers + 1):
                tiles_a = self._tiles(self._source.block(layer, rows), mask_a)
                tiles_b = other._tiles(other._source.block(layer, rows), mask_b)
                pairs = (
                    (vocab, a, b.to(a.device))
                    for (vocab, a), (_, b) in zip(tiles_a, tiles_b, strict=True)
                )
                results[layer].append(
                    pair_stats(pairs, lse_a[layer, rows], lse_b[layer, rows], delta_k)
                )

        def stack(field: str) -> Tensor:
            return torch.stack(
                [torch.cat([getattr(r, field) for r in row]) for row in results]
            ).cpu()

        deltas = {"delta_ids": stack("delta_ids"), "deltas": stack("deltas")} if delta_k else {}
        return PairStats(kl=stack("kl"), js=stack("js"), tv=stack("tv"), **deltas)

    def _comparison(
        self,
        name: str,
        other: PredictionTrajectory,
        field: str,
        units: str,
        min_prob_delta: float,
        topk: int,
        formatter: TokenFormatter | None,
        **kw: Any,
    ) -> TrajectoryStatistic:
        min_prob_delta = _probability(min_prob_delta, "min_prob_delta")
        topk = positive_int(topk, "topk")
        pair = self._pair(other, delta_k=topk if self.tokenizer is not None else 0)
        labels = self._delta_labels(pair, min_prob_delta, topk, formatter)
        return self._statistic(name, getattr(pair, field), units, labels, **kw)

    def kl_divergence(
        self,
        other: PredictionTrajectory,
        units: Units = "nats",
        *,
        min_prob_delta: float = MIN_PROB_DELTA,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """KL(self ‖ other) at each layer and position.

        Args:
            other: a trajectory of the same shape (lens-built or `from_log_probs`).
            units: `"nats"` or `"bits"`.
            min_prob_delta: a cell shows the token whose probability changed most
                (other − self) only where |Δp| is at least this and not zero; the
                default, float32's epsilon as in tuned-lens, blanks cells that did not
                change.
            topk: how many of the largest changes the hover lists, with their signed Δp.
            formatter: how tokens are written (default `TokenFormatter()`).

        The largest changes come from the same streaming pass as the divergence
        (`topk` ids and values per cell, never `[layer, pos, vocab]`).
        """
        return self._comparison(
            "KL(Self ‖ Other)",
            other,
            "kl",
            _checked_units(units),
            min_prob_delta,
            topk,
            formatter,
            min=0.0,
        )

    def js_divergence(
        self,
        other: PredictionTrajectory,
        units: Units = "nats",
        *,
        min_prob_delta: float = MIN_PROB_DELTA,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """Jensen–Shannon divergence to `other`: symmetric, in [0, ln 2] nats.

        Labels as in `kl_divergence`."""
        return self._comparison(
            "JS(Self ‖ Other)",
            other,
            "js",
            _checked_units(units),
            min_prob_delta,
            topk,
            formatter,
            min=0.0,
            max=LN2,
        )

    def total_variation(
        self,
        other: PredictionTrajectory,
        *,
        min_prob_delta: float = MIN_PROB_DELTA,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """Total variation distance ½‖p − q‖₁ to `other`, in [0, 1].

        Labels as in `kl_divergence`."""
        return self._comparison(
            "TV(Self ‖ Other)",
            other,
            "tv",
            "probs",
            min_prob_delta,
            topk,
            formatter,
            min=0.0,
            max=1.0,
        )

    # --- labels ----------------------------------------------------------------------------

    def _sequence_labels(self, formatter: TokenFormatter | None = None) -> np.ndarray | None:
        if self.tokenizer is None:
            return None
        formatter = formatter or TokenFormatter()
        tokens = formatter.format_ids(self.tokenizer, self.input_ids.numpy())
        return _consolidate(tokens.reshape(-1, self.num_tokens))

    def _top_prediction_labels(
        self, min_prob: float, topk: int, formatter: TokenFormatter | None
    ) -> TrajectoryLabels | None:
        """Cells: the top-1 token where its probability ≥ `min_prob`; hover: the top
        `topk` (at most `self.topk`) of the first sequence.

        Built once per setting and shared by all statistics of this trajectory.
        """
        min_prob = _probability(min_prob, "min_prob")
        k = min(positive_int(topk, "topk"), self.topk)
        if self.tokenizer is None:
            return None
        key = (min_prob, k)
        if formatter is None and key in self._labels:
            return self._labels[key]
        ids = self._readout.topk_ids.reshape(self.num_layers + 1, -1, self.num_tokens, self.topk)
        probs = self._readout.topk_log_probs.reshape(ids.shape).exp()
        labels = self._cell_labels(ids[..., 0], probs[..., 0] >= min_prob, formatter)
        hover_values = [f"{100 * p:.1f}%" for p in probs[:, 0, :, :k].reshape(-1).tolist()]
        hover = self._hover_entries(ids[:, 0, :, :k], hover_values, formatter)
        result = TrajectoryLabels(label_strings=labels, hover_over_entries=hover)
        if formatter is None:
            self._labels[key] = result
        return result

    def _delta_labels(
        self, pair: PairStats, min_prob_delta: float, topk: int, formatter: TokenFormatter | None
    ) -> TrajectoryLabels | None:
        """Cells: the token whose probability changed most where |Δp| ≥ `min_prob_delta`
        (and Δp ≠ 0); hover: the `topk` largest changes of the first sequence (blank
        rows for tokens that did not change at all)."""
        if self.tokenizer is None or pair.delta_ids is None or pair.deltas is None:
            return None
        k = min(topk, pair.delta_k)
        shape = (self.num_layers + 1, -1, self.num_tokens, pair.delta_k)
        ids, deltas = pair.delta_ids.reshape(shape), pair.deltas.reshape(shape)
        largest = deltas[..., 0].abs()
        labels = self._cell_labels(
            ids[..., 0], (largest >= min_prob_delta) & (largest > 0), formatter
        )
        first = deltas[:, 0, :, :k]
        hover_values = [f"Δ{100 * d:+.2f}%" for d in first.reshape(-1).tolist()]
        hover = self._hover_entries(ids[:, 0, :, :k], hover_values, formatter)
        # Tokens whose probability did not change at all are no answer to "what changed".
        hover[(first == 0).numpy()] = ""
        return TrajectoryLabels(label_strings=labels, hover_over_entries=hover)

    def _cell_labels(
        self, ids: Tensor, shown: Tensor, formatter: TokenFormatter | None
    ) -> np.ndarray:
        """`[layer, batch, pos]` ids → `[layer, pos]` strings, blank where not `shown`;
        a cell where the sequences disagree shows `*`."""
        tokens = (formatter or TokenFormatter()).format_ids(self.tokenizer, ids.numpy())
        tokens = np.where(shown.numpy(), tokens, "")
        return np.stack([_consolidate(layer) for layer in tokens])

    def _hover_entries(
        self, ids: Tensor, values: list[str], formatter: TokenFormatter | None
    ) -> np.ndarray:
        """`[layer, pos, k, 2]` (token, value) rows of the hover table."""
        tokens = (formatter or TokenFormatter(max_string_len=16)).format_ids(
            self.tokenizer, ids.numpy()
        )
        column = np.array([*values, ""], dtype=object)[:-1].reshape(tokens.shape)
        return np.stack([tokens, column], -1)

    def topk_widget(self, layer: int = -1, batch_index: int = 0):
        """circuitsvis TokenLogProbs view of one layer: colour = log-prob of the target,
        hover = the lens's top-k at that layer. Needs `targets`."""
        from hooklens.plotting.widgets import token_log_probs_view

        self._need("targets", "tokenizer")
        assert self._readout.target_rank is not None and self._readout.target_log_prob is not None
        row = self._layer_index(layer)
        ids = self.input_ids.reshape(-1, self.num_tokens)[batch_index]
        per_seq = slice(batch_index * self.num_tokens, (batch_index + 1) * self.num_tokens - 1)
        formatter = TokenFormatter(max_string_len=None)
        topk_ids = self._readout.topk_ids[row, per_seq].numpy()
        name = "output" if row == self.num_layers else f"layer {row}"
        return token_log_probs_view(
            prompt=formatter.format_ids(self.tokenizer, ids.numpy()).tolist(),
            topk_log_probs=self._readout.topk_log_probs[row, per_seq].numpy(),
            topk_tokens=formatter.format_ids(self.tokenizer, topk_ids).tolist(),
            target_ranks=(self._readout.target_rank[row, per_seq] - 1).clamp_min(0).numpy(),
            target_log_probs=np.nan_to_num(self._readout.target_log_prob[row, per_seq].numpy()),
            title=f"Top-{self.topk} predictions at {name}",
        )


def _consolidate(tokens: np.ndarray, mixed: str = "*") -> np.ndarray:
    """`[batch, pos]` strings → `[pos]`: the token where the batch agrees, else `mixed`."""
    first = tokens[0]
    same = (tokens == first[None]).all(axis=0)
    return np.where(same, first, mixed)


def _lens_component(lens: Any, residual_component: str | None) -> str:
    """The residual a trajectory reads: the one asked for, else the lens's own. A lens
    bound to one residual (a Jacobian lens) refuses another (`LensMismatchError`)."""
    if isinstance(lens, Lens):
        return lens._check_component(residual_component)
    return normalize_component(residual_component or "resid_pre")


def _input_ids(input_ids: Any) -> Tensor:
    ids = token_id_tensor(input_ids, "input_ids")
    if ids.ndim == 0 or ids.shape[-1] == 0:
        raise InputError(
            f"input_ids must be [..., pos] with pos ≥ 1, got {tuple(ids.shape)}: "
            "pass at least one token"
        )
    return ids


def _probability(value: Any, name: str) -> float:
    """`value` as a float in [0, 1], or a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InputTypeError(f"{name} must be a probability (a float in [0, 1]), got {value!r}")
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise InputError(f"{name} must lie in [0, 1] (a probability), got {number}")
    return number
