"""PredictionTrajectory: what a lens predicts at every layer and position, cheaply.

A trajectory keeps the residual stream (references into the cache, no copies), the lens,
and small `[layer, position]` arrays. Its constructor makes ONE pass over layers,
position blocks and vocabulary chunks — the unembedding matmul is the whole cost — and
computes every single-trajectory statistic at once: log-sum-exp, entropy, KL from the
model's output, the top-k tokens, and, given targets, the target's log-prob and rank.
`[layers, pos, vocab]` log-probabilities are never materialised; peak extra memory is
a few `[row_block, vocab_chunk]` tiles. Comparisons between two trajectories
(`kl_divergence`, `js_divergence`, `total_variation`) make one more pass over both.

Rows are the lens's layers `0..n_layers-1` plus a last "output" row: the model's own
distribution, from the logits passed in.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklens.errors import LensMismatchError, NonFiniteActivationError
from hooklens.lenses.base import Lens
from hooklens.model import ModelAdapter, normalize_component
from hooklens.plotting.statistic import TrajectoryLabels, TrajectoryStatistic
from hooklens.plotting.tokens import TokenFormatter
from hooklens.residuals import get_residual
from hooklens.stats import LN2
from hooklens.streaming import (
    PairStats,
    ReferenceTile,
    VocabAccumulator,
    VocabStats,
    finite_floor,
    logsumexp_chunks,
    pair_stats,
)

Units = Literal["nats", "bits"]

# Tiles of [ROW_BLOCK, VOCAB_CHUNK] float32 (4 MiB) stay in cache for the ~10
# elementwise passes per tile, and are still big enough for an efficient matmul.
ROW_BLOCK = 256
VOCAB_CHUNK = 4096
HOVER_K = 5  # tokens listed when hovering over a heatmap cell


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


def _as_long(ids: Any, name: str) -> Tensor | None:
    if ids is None:
        return None
    tensor = torch.as_tensor(ids).detach().cpu()
    if tensor.is_floating_point() and tensor.numel() > 0:
        raise TypeError(f"{name} must hold integer token ids, got {tensor.dtype}")
    return tensor.long()


def next_token_targets(input_ids: Int[Tensor, "... pos"]) -> Int[Tensor, "... pos"]:
    """Each position's next input token as its target; -1 (no target) at the last one.

    Examples:
        >>> next_token_targets(torch.tensor([5, 6, 7]))
        tensor([ 6,  7, -1])
    """
    ids = torch.as_tensor(input_ids)
    return torch.cat([ids[..., 1:], torch.full_like(ids[..., :1], -1)], dim=-1)


class PredictionTrajectory:
    """Next-token predictions of a lens at every layer and position of some input.

    Build one with `from_lens_and_cache` (after your own `model.run_with_cache`) or
    `from_lens_and_model`. Statistics come back as `TrajectoryStatistic` objects
    shaped `[..., layer, pos]` (leading batch axes kept), ready for `.figure()`.

    Examples:
        >>> logits, cache = model.run_with_cache(tokens)                 # doctest: +SKIP
        >>> traj = PredictionTrajectory.from_lens_and_cache(
        ...     lens, tokens, cache, logits, targets=next_token_targets(tokens))
        ...                                                              # doctest: +SKIP
        >>> traj.entropy().figure()                                      # doctest: +SKIP
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
        residual_component: str = "resid_pre",
        topk: int = 5,
        _readout: _Readout | None = None,
    ):
        self.lens = lens
        self.residual_component = normalize_component(residual_component)
        self.input_ids = _as_long(input_ids, "input_ids")
        self.targets = _as_long(targets, "targets")
        self.anti_targets = _as_long(anti_targets, "anti_targets")
        self.tokenizer = tokenizer
        self.mask_input = mask_input
        self.topk = topk
        self._residuals = list(residuals)
        self._model_logits = model_logits
        self._validate()
        self._pairs: weakref.WeakKeyDictionary[PredictionTrajectory, PairStats] = (
            weakref.WeakKeyDictionary()
        )
        self._labels: TrajectoryLabels | None = None
        if _readout is None:
            with torch.no_grad():
                _readout = self._read()
        self._readout = _readout

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
        residual_component: str = "resid_pre",
        mask_input: bool = False,
        topk: int = 5,
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
            residual_component: `"resid_pre"` (default), `"resid_mid"` or `"resid_post"`.
            mask_input: give every token of each input sequence probability 0 at the
                lens rows (not the output row), to see what else the lens predicts.
            topk: how many most likely tokens to keep per cell, for labels and hover.
        """
        component = normalize_component(residual_component)
        adapter = lens.adapter
        residuals = [
            get_residual(cache, layer, component, adapter) for layer in range(lens.n_layers)
        ]
        tokenizer = getattr(getattr(cache, "model", None), "tokenizer", None) or adapter.tokenizer
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
        residual_component: str = "resid_pre",
        topk: int = 5,
        fwd_hooks: Sequence[tuple[Any, Any]] = (),
    ) -> PredictionTrajectory:
        """Run `model` on `input_ids` (ids, or a string to tokenize) and build a trajectory.

        Only the residual hooks the lens reads are cached. `fwd_hooks` (TransformerLens
        `(name, fn)` pairs, e.g. from `hooklens.interventions`) are active during the run,
        and so are hooks the caller added with `with model.hooks(...)`; the lens reads
        the residuals as the hooks left them.
        """
        adapter = ModelAdapter(model)
        if isinstance(input_ids, str):
            input_ids = model.to_tokens(input_ids)[0]
        ids = _as_long(input_ids, "input_ids")
        assert ids is not None
        if ids.numel() == 0:
            raise ValueError("input_ids is empty: pass at least one token")
        component = normalize_component(residual_component)
        names = adapter.residual_hook_names(component)
        hooks = model.hooks(fwd_hooks=list(fwd_hooks)) if fwd_hooks else contextlib.nullcontext()
        with torch.no_grad(), hooks:
            run_ids = ids if ids.ndim > 1 else ids[None]
            logits, cache = model.run_with_cache(
                run_ids.to(adapter.device), names_filter=lambda name: name in names
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
        )
        if tokenizer is not None:
            trajectory.tokenizer = tokenizer
        return trajectory

    # --- shape and checks -------------------------------------------------------------

    def _validate(self) -> None:
        ids = self.input_ids
        assert ids is not None
        if ids.ndim == 0 or ids.shape[-1] == 0:
            raise ValueError(
                f"input_ids must be [..., pos] with pos ≥ 1, got {tuple(ids.shape)}: "
                "pass at least one token"
            )
        if len(self._residuals) != self.lens.n_layers:
            raise LensMismatchError(
                f"{len(self._residuals)} residuals for a lens over {self.lens.n_layers} layers"
            )
        expected = (*ids.shape, self.lens.unembed.d_model)
        for layer, h in enumerate(self._residuals):
            if tuple(h.shape) != expected:
                raise ValueError(
                    f"the residual of layer {layer} is {tuple(h.shape)}, but input_ids "
                    f"{tuple(ids.shape)} need {expected}: are they from the same run?"
                )
        logits_shape = (*ids.shape, self.lens.unembed.d_vocab)
        if tuple(self._model_logits.shape) != logits_shape:
            raise ValueError(
                f"model_logits are {tuple(self._model_logits.shape)}, expected {logits_shape} "
                "(the logits of the same run, [..., pos, vocab])"
            )
        for name in ("targets", "anti_targets"):
            value = getattr(self, name)
            if value is None:
                continue
            if value.shape != ids.shape:
                raise ValueError(f"{name} are {tuple(value.shape)}, input_ids {tuple(ids.shape)}")
            if (value >= self.vocab_size).any():
                raise ValueError(f"{name} hold ids ≥ the vocabulary size {self.vocab_size}")

    @property
    def batch_shape(self) -> tuple[int, ...]:
        assert self.input_ids is not None
        return tuple(self.input_ids.shape[:-1])

    @property
    def n_batch_axis(self) -> int:
        return len(self.batch_shape)

    @property
    def num_layers(self) -> int:
        """Layers read by the lens, not counting the output row."""
        return self.lens.n_layers

    @property
    def num_tokens(self) -> int:
        assert self.input_ids is not None
        return int(self.input_ids.shape[-1])

    @property
    def vocab_size(self) -> int:
        return self.lens.unembed.d_vocab

    def __repr__(self) -> str:
        batch = f", batch={self.batch_shape}" if self.batch_shape else ""
        extras = "".join(
            f", {name}=yes"
            for name in ("targets", "anti_targets")
            if getattr(self, name) is not None
        )
        return (
            f"PredictionTrajectory(layers={self.num_layers}, pos={self.num_tokens}{batch}, "
            f"lens={self.lens!r}, component={self.residual_component!r}{extras})"
        )

    # --- the streaming pass -----------------------------------------------------------

    def _rows(self) -> int:
        assert self.input_ids is not None
        return self.input_ids.numel()

    def _flat_logits(self) -> Tensor:
        return self._model_logits.reshape(self._rows(), -1)

    def _flat_ids(self, ids: Tensor | None) -> Tensor | None:
        return None if ids is None else ids.reshape(-1).to(self.lens.unembed.W_U.device)

    def _normalized(self, layer: int, rows: slice = slice(None)) -> Tensor:
        """The lens's input to W_U for `layer`: `[rows, d_model]`."""
        h = self._residuals[layer].reshape(self._rows(), -1)[rows]
        if not bool(torch.isfinite(h).all()):
            raise NonFiniteActivationError(
                f"the {self.residual_component} residual of layer {layer} holds NaN or "
                "infinite values; check the model's dtype or the hooks of that run"
            )
        return self.lens.unembed.final_norm(self.lens.transform_hidden(h, layer))

    def _input_mask(self) -> Tensor | None:
        """`[sequence, vocab]`: the tokens of each input sequence, or None (no masking).

        One row per sequence, not per position: `_sequence_mask` picks rows on demand.
        """
        if not self.mask_input:
            return None
        assert self.input_ids is not None
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

    def _lens_logits(
        self, block: Tensor, vocab: slice, block_mask: Tensor | None
    ) -> Float[Tensor, "rows chunk"]:
        """Float32 lens logits of a normalised row block; masked tokens at the floor."""
        logits = self.lens.unembed.logits_of_normalized(block, vocab).float()
        if block_mask is not None:
            logits.masked_fill_(block_mask[:, vocab].to(logits.device), finite_floor(logits.dtype))
        return logits

    def _output_logits(self, rows: slice, vocab: slice) -> Float[Tensor, "rows chunk"]:
        """A float32 copy (the accumulators work in place) with -inf at the finite floor."""
        chunk = self._flat_logits()[rows, vocab].float()
        return chunk.clamp_min(finite_floor(chunk.dtype))

    def _lens_chunks(
        self, normed: Tensor, rows: slice, mask: Tensor | None
    ) -> Iterator[tuple[slice, Tensor]]:
        block_mask = None if mask is None else self._sequence_mask(mask, rows)
        for vocab in self._vocab_chunks():
            yield vocab, self._lens_logits(normed[rows], vocab, block_mask)

    def _output_chunks(self, rows: slice) -> Iterator[tuple[slice, Tensor]]:
        for vocab in self._vocab_chunks():
            yield vocab, self._output_logits(rows, vocab)

    def _read(self) -> _Readout:
        """The construction pass: row blocks × vocabulary chunks × layers.

        Layers are the innermost loop so each chunk of the output distribution (the
        reference of every forward KL) is exponentiated once, not once per layer.
        """
        n_layers = self.num_layers
        unembed = self.lens.unembed
        targets, anti = self._flat_ids(self.targets), self._flat_ids(self.anti_targets)
        mask = self._input_mask()
        out_logits = self._flat_logits()
        floor = finite_floor(torch.float32)
        results: list[list[VocabStats]] = [[] for _ in range(n_layers + 1)]
        target_logits: list[list[Tensor]] = [[] for _ in range(n_layers + 1)]
        anti_logits: list[list[Tensor]] = [[] for _ in range(n_layers + 1)]

        def token_logits(
            normed: Tensor | None, rows: slice, ids: Tensor, block_mask: Tensor | None
        ) -> Tensor:
            if normed is None:  # the output row
                picked = out_logits[rows].gather(-1, ids.clamp_min(0)[:, None])[:, 0]
                return picked.float().clamp_min(floor)
            logits = unembed.token_logits(normed, ids.clamp_min(0)).float()
            if block_mask is None:
                return logits
            hidden = block_mask.gather(1, ids.clamp_min(0).cpu()[:, None])[:, 0]
            return logits.masked_fill(hidden.to(logits.device), floor)

        vocab_chunks = self._vocab_chunks()
        for rows in self._blocks():
            block_mask = None if mask is None else self._sequence_mask(mask, rows)
            normed: list[Tensor | None] = [
                self._normalized(layer, rows) for layer in range(n_layers)
            ]
            normed.append(None)
            row_targets = None if targets is None else targets[rows]
            accumulators = []
            for layer, hidden in enumerate(normed):
                zt = (
                    None
                    if row_targets is None
                    else token_logits(hidden, rows, row_targets, block_mask)
                )
                if anti is not None:
                    anti_logits[layer].append(token_logits(hidden, rows, anti[rows], block_mask))
                if zt is not None:
                    target_logits[layer].append(zt)
                accumulators.append(VocabAccumulator(self.topk, row_targets, zt))
            out_lse = logsumexp_chunks(self._output_logits(rows, v) for v in vocab_chunks)
            if not bool(torch.isfinite(out_lse).all()):
                raise ValueError(
                    "model_logits hold NaN or +inf, or a position where every logit is -inf"
                )
            for vocab in vocab_chunks:
                output = self._output_logits(rows, vocab)
                reference = ReferenceTile.from_log_probs(output - out_lse[:, None])
                for layer, hidden in enumerate(normed):
                    logits = (
                        output if hidden is None else self._lens_logits(hidden, vocab, block_mask)
                    )
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
            raise TypeError(f"slice_sequence takes a slice, got {type(positions).__name__}")
        assert self.input_ids is not None
        index = torch.arange(self._rows()).reshape(self.input_ids.shape)[..., positions]
        if index.numel() == 0:
            raise ValueError(f"{positions} selects no positions of {self.num_tokens}")

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[..., positions]

        return PredictionTrajectory(
            self.lens,
            [h[..., positions, :] for h in self._residuals],
            self._model_logits[..., positions, :],
            cut(self.input_ids),  # type: ignore[arg-type]
            targets=cut(self.targets),
            anti_targets=cut(self.anti_targets),
            tokenizer=self.tokenizer,
            mask_input=self.mask_input,
            residual_component=self.residual_component,
            topk=self.topk,
            _readout=self._readout.select(index.reshape(-1)),
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
        layer = self.lens.layer_index(layer)
        with torch.no_grad():
            if layer == self.num_layers:
                logits = self._model_logits.float()
            else:
                logits = self.lens.unembed.logits_of_normalized(self._normalized(layer)).float()
                mask = self._input_mask()
                if mask is not None:
                    rows = self._sequence_mask(mask, slice(0, self._rows()))
                    logits = logits.masked_fill(rows.to(logits.device), -math.inf)
        log_probs = torch.log_softmax(logits, dim=-1)
        return log_probs.reshape(*self.batch_shape, self.num_tokens, -1)

    # --- statistics -----------------------------------------------------------------------

    def _to_stat(self, values: Tensor) -> np.ndarray:
        """`[layer + 1, rows]` → `[..., layer + 1, pos]` numpy."""
        shaped = values.reshape(values.shape[0], *self.batch_shape, self.num_tokens)
        return shaped.movedim(0, -2).float().numpy()

    def _statistic(
        self,
        name: str,
        values: Tensor,
        units: str,
        labels: TrajectoryLabels | Literal["top"] | None = "top",
        **kw: Any,
    ) -> TrajectoryStatistic:
        stats = self._to_stat(values)
        if units == "bits":
            stats = stats / LN2
            for bound in ("min", "max"):
                if kw.get(bound) is not None:
                    kw[bound] = kw[bound] / LN2
        elif units not in ("nats", "probs", ""):
            raise ValueError(f"units must be 'nats' or 'bits', got {units!r}")
        return TrajectoryStatistic(
            name=name,
            stats=stats,
            units=units,
            sequence_labels=self._sequence_labels(),
            sequence_tokens=self._sequence_labels(TokenFormatter(max_string_len=None)),
            trajectory_labels=self._top_prediction_labels() if labels == "top" else labels,
            **kw,
        )

    def _need(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"this statistic needs {' and '.join(missing)}: pass them when building the "
                "trajectory (next_token_targets(input_ids) scores the next input token)"
            )

    def entropy(self, units: Units = "nats") -> TrajectoryStatistic:
        """Entropy of each layer's prediction."""
        return self._statistic("Entropy", self._readout.entropy, units, min=0.0)

    def forward_kl(self, units: Units = "nats") -> TrajectoryStatistic:
        """KL(output ‖ layer): how far each layer's prediction is from the model's."""
        return self._statistic("Forward KL", self._readout.forward_kl, units, min=0.0)

    def cross_entropy(self, units: Units = "nats") -> TrajectoryStatistic:
        """`-log p(target)` at each layer (NaN where a position has no target)."""
        self._need("targets")
        assert self._readout.target_log_prob is not None
        return self._statistic("Cross Entropy", -self._readout.target_log_prob, units, min=0.0)

    def rank(self, show_ranks: bool = False) -> TrajectoryStatistic:
        """1-based rank of the target among each layer's predictions (1 = top).

        With `show_ranks`, the cells show the rank instead of the top prediction.
        """
        self._need("targets")
        assert self._readout.target_rank is not None
        ranks = self._readout.target_rank.float()
        ranks[ranks == 0] = math.nan  # positions without a target
        stat = self._statistic("Rank", ranks, "", min=1.0, max=float(self.vocab_size))
        if show_ranks and stat.trajectory_labels is not None:
            matrix = stat.matrix
            text = np.where(np.isnan(matrix), "", np.char.mod("%d", np.nan_to_num(matrix)))
            stat.trajectory_labels = replace(stat.trajectory_labels, label_strings=text)
        return stat

    def max_probability(self) -> TrajectoryStatistic:
        """Probability of each layer's most likely token."""
        top = self._readout.topk_log_probs[..., 0].exp()
        return self._statistic("Max Probability", top, "probs", min=0.0, max=1.0)

    def log_prob_diff(self, delta: bool = False, units: Units = "nats") -> TrajectoryStatistic:
        """`log p(target) - log p(anti_target)` per layer; `delta`: change from the layer below."""
        self._need("targets", "anti_targets")
        assert self._readout.target_log_prob is not None
        assert self._readout.anti_target_log_prob is not None
        diff = self._readout.target_log_prob - self._readout.anti_target_log_prob
        if not delta:
            return self._statistic("Log Prob Difference", diff, units)
        steps = [f"{i}→{i + 1}" for i in range(self.num_layers - 1)]
        return self._statistic(
            "Δ Log Prob Difference",
            diff[1:] - diff[:-1],
            units,
            labels=None,
            layer_labels=np.array([*steps, f"{self.num_layers - 1}→output"]),
        )

    # --- comparisons -------------------------------------------------------------------

    def _compatible(self, other: PredictionTrajectory) -> None:
        if not isinstance(other, PredictionTrajectory):
            raise TypeError(
                f"compare with another PredictionTrajectory, got {type(other).__name__}"
            )
        if (self.num_layers, self.num_tokens, self.batch_shape, self.vocab_size) != (
            other.num_layers,
            other.num_tokens,
            other.batch_shape,
            other.vocab_size,
        ):
            raise ValueError(
                "trajectories must have the same layers, positions, batch and vocabulary: "
                f"{self!r} vs {other!r}"
            )

    def _pair(self, other: PredictionTrajectory) -> PairStats:
        self._compatible(other)
        if other not in self._pairs:
            with torch.no_grad():
                self._pairs[other] = self._read_pair(other)
        return self._pairs[other]

    def _read_pair(self, other: PredictionTrajectory) -> PairStats:
        n_rows, n_layers = self._rows(), self.num_layers
        blocks = [slice(r, min(r + ROW_BLOCK, n_rows)) for r in range(0, n_rows, ROW_BLOCK)]
        mask_a, mask_b = self._input_mask(), other._input_mask()
        lse_a = self._readout.logsumexp.to(self.lens.unembed.W_U.device)
        lse_b = other._readout.logsumexp.to(other.lens.unembed.W_U.device)
        results: list[list[PairStats]] = []
        for layer in range(n_layers + 1):
            if layer < n_layers:
                normed_a, normed_b = self._normalized(layer), other._normalized(layer)
            row_results = []
            for rows in blocks:
                if layer == n_layers:
                    chunks_a, chunks_b = self._output_chunks(rows), other._output_chunks(rows)
                else:
                    chunks_a = self._lens_chunks(normed_a, rows, mask_a)
                    chunks_b = other._lens_chunks(normed_b, rows, mask_b)
                pairs = (
                    (vocab, a, b.to(a.device))
                    for (vocab, a), (_, b) in zip(chunks_a, chunks_b, strict=True)
                )
                row_results.append(pair_stats(pairs, lse_a[layer, rows], lse_b[layer, rows]))
            results.append(row_results)

        def stack(field: str) -> Tensor:
            return torch.stack(
                [torch.cat([getattr(r, field) for r in row]) for row in results]
            ).cpu()

        return PairStats(kl=stack("kl"), js=stack("js"), tv=stack("tv"))

    def kl_divergence(
        self, other: PredictionTrajectory, units: Units = "nats"
    ) -> TrajectoryStatistic:
        """KL(self ‖ other) at each layer and position."""
        return self._statistic("KL(Self ‖ Other)", self._pair(other).kl, units, min=0.0)

    def js_divergence(
        self, other: PredictionTrajectory, units: Units = "nats"
    ) -> TrajectoryStatistic:
        """Jensen–Shannon divergence to `other`: symmetric, in [0, ln 2] nats."""
        return self._statistic("JS(Self ‖ Other)", self._pair(other).js, units, min=0.0, max=LN2)

    def total_variation(self, other: PredictionTrajectory) -> TrajectoryStatistic:
        """Total variation distance ½‖p − q‖₁ to `other`, in [0, 1]."""
        return self._statistic("TV(Self ‖ Other)", self._pair(other).tv, "probs", min=0.0, max=1.0)

    # --- labels ----------------------------------------------------------------------------

    def _sequence_labels(self, formatter: TokenFormatter | None = None) -> np.ndarray | None:
        if self.tokenizer is None:
            return None
        assert self.input_ids is not None
        formatter = formatter or TokenFormatter()
        tokens = formatter.format_ids(self.tokenizer, self.input_ids.numpy())
        return _consolidate(tokens.reshape(-1, self.num_tokens))

    def _top_prediction_labels(self) -> TrajectoryLabels | None:
        """Cells show the top-1 prediction; hover the top-5 (first batch item).

        Built once per trajectory and shared by all its statistics.
        """
        if self.tokenizer is None:
            return None
        if self._labels is None:
            formatter = TokenFormatter()
            n_rows = self.num_layers + 1
            ids = self._readout.topk_ids.reshape(n_rows, -1, self.num_tokens, self.topk)
            top1 = formatter.format_ids(self.tokenizer, ids[..., 0].numpy())  # [layer, b, pos]
            labels = np.stack([_consolidate(layer) for layer in top1])
            k = min(HOVER_K, self.topk)
            hover_tokens = TokenFormatter(max_string_len=16).format_ids(
                self.tokenizer, ids[:, 0, :, :k].numpy()
            )
            probs = self._readout.topk_log_probs.reshape(ids.shape)[:, 0, :, :k].exp()
            hover_probs = np.array([f"{100 * p:.1f}%" for p in probs.reshape(-1).tolist()] + [""])
            entries = np.stack(
                [hover_tokens, hover_probs[:-1].astype(object).reshape(hover_tokens.shape)], -1
            )
            self._labels = TrajectoryLabels(label_strings=labels, hover_over_entries=entries)
        return self._labels

    def topk_widget(self, layer: int = -1, batch_index: int = 0):
        """circuitsvis TokenLogProbs view of one layer: colour = log-prob of the target,
        hover = the lens's top-k at that layer. Needs `targets`."""
        from hooklens.plotting.widgets import token_log_probs_view

        self._need("targets", "tokenizer")
        assert self._readout.target_rank is not None and self._readout.target_log_prob is not None
        row = self.lens.layer_index(layer)
        assert self.input_ids is not None
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
