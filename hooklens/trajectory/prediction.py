"""`PredictionTrajectory`: what a lens predicts at every layer and position, cheaply.

The facade of the `hooklens.trajectory` package: it keeps where its rows of logits
come from (a `RowSource`: a lens with references into the cache, no copies, or
log-probabilities computed elsewhere), the tokens (`inputs`), and the `Readout` of ONE
streaming pass (`readout.read`) over position blocks, vocabulary chunks and layers —
the unembedding matmul is the whole cost — which computes every single-trajectory
statistic at once: log-sum-exp, entropy, KL from the model's output, the top-k tokens,
and, given targets, the target's log-prob and rank. `[layers, pos, vocab]`
log-probabilities are never materialised. Comparisons between two trajectories
(`kl_divergence`, `js_divergence`, `total_variation`) make one more pass over both
(`readout.read_pair`), which also keeps the k tokens whose probability changed most.

Rows are the lens's layers `0..n_layers-1` plus a last "output" row: the model's own
distribution, from the logits passed in (or the last layer row of `from_log_probs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, SupportsIndex

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooklens._checks import layer_index
from hooklens.errors import InputError, InputTypeError
from hooklens.lenses.base import Lens
from hooklens.plotting.tokens import TokenFormatter
from hooklens.trajectory import build, inputs
from hooklens.trajectory.rows import LensSource, LogProbSource
from hooklens.trajectory.statistics import TrajectoryStatistics


class PredictionTrajectory(TrajectoryStatistics):
    """Next-token predictions of a lens at every layer and position of some input.

    Build one with `from_lens_and_cache` (after your own `model.run_with_cache`) or
    `from_lens_and_model`, or from log-probabilities computed elsewhere with
    `from_log_probs`. Statistics come back as `TrajectoryStatistic` objects shaped
    `[..., layer, pos]` (leading batch axes kept), ready for `.figure()`.

    Labels (given a tokenizer), as in tuned-lens: each cell of a single-trajectory
    statistic shows the top-1 token of that layer where its probability is at least
    `min_prob` (blank elsewhere), and hovering lists the `topk` most likely tokens —
    at most the `topk` this trajectory kept when it was built (5 by default, or the
    whole vocabulary if it is smaller; build it with `topk=10` to list tuned-lens's
    ten). Comparisons (`kl_divergence`,
    `js_divergence`, `total_variation`) label each cell with the token whose
    probability changed most from self to other, where |Δp| ≥ `min_prob_delta`, and
    hover lists the `topk` largest changes with their signed Δp. With a batch, a cell
    shows its label where every sequence agrees (`*` where they differ) and the hover
    describes the first sequence.

    Examples:
        >>> from hooklens import PredictionTrajectory, next_token_targets
        >>> logits, cache = model.run_with_cache(tokens)
        >>> traj = PredictionTrajectory.from_lens_and_cache(
        ...     lens, tokens, cache, logits, targets=next_token_targets(tokens))
        >>> traj
        PredictionTrajectory(layers=4, pos=6, batch=(1,), lens=TunedLens(...), ...)
        >>> traj.entropy(min_prob=0.1)  # [batch, layers + output, pos]
        TrajectoryStatistic('Entropy', shape=(1, 5, 6) nats, mean=...)
        >>> fig = traj.entropy(min_prob=0.1).figure()  # a plotly Figure; fig.show() draws it
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
        topk: int | None = None,
        attention_mask: Any = None,
    ):
        if not isinstance(lens, Lens):
            raise InputTypeError(f"lens must be a hooklens Lens, got {type(lens).__name__}")
        component = build.lens_component(lens, residual_component)
        ids = inputs.input_id_tensor(input_ids)
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
        topk: int | None = None,
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
            topk: how many most likely tokens to keep per cell, for labels and hover;
                default 5 (`hooklens.trajectory.DEFAULT_TOPK`), or the whole vocabulary if
                it is smaller. A `topk` given larger than the vocabulary is refused.
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
        residuals, component, tokenizer, attention_mask = build.read_cache(
            lens, input_ids, cache, model_logits, residual_component, attention_mask, check_logits
        )
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
        topk: int | None = None,
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
        `n_ctx` tokens with a `hooklens.errors.TextCutWarning` that says how many were
        dropped, as `trajectory_report` does; token ids longer than that are refused.
        """
        ids, logits, cache, component = build.run_model(
            lens, model, input_ids, residual_component, fwd_hooks, attention_mask
        )
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
        topk: int | None = None,
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
            topk: how many most likely tokens to keep per cell; default 5, or the
                whole vocabulary if it is smaller (a 3-token vocabulary keeps 3). A
                `topk` given larger than the vocabulary is refused.
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
        ids = inputs.input_id_tensor(input_ids)
        padding = (
            None
            if attention_mask is None
            else ~inputs.attention_mask_tensor(attention_mask, ids.shape)
        )
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

    # --- slicing and raw values -----------------------------------------------------------

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
        index = torch.arange(self._layout.n_rows).reshape(self.input_ids.shape)[..., positions]
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
            readout_=self._readout.select(index.reshape(-1)),
        )

    def top_predictions(
        self,
    ) -> tuple[Int[Tensor, "... layer pos k"], Float[Tensor, "... layer pos k"]]:
        """The `topk` most likely tokens at each layer and position, most likely first:
        `(token_ids, probabilities)`, each `[..., layer + 1, pos, topk]`."""
        grid = self._layout.grid
        return grid(self._readout.topk_ids), grid(self._readout.topk_log_probs.exp())

    def layer_log_probs(self, layer: SupportsIndex) -> Float[Tensor, "... pos vocab"]:
        """Full log-probabilities of one row (`-1` = output): `[..., pos, vocab]`."""
        layer = layer_index(layer, self.num_layers)
        self._source.check_unchanged()
        with torch.no_grad():
            log_probs = torch.log_softmax(self._rows.full_row(layer), dim=-1)
        return self._layout.positions(log_probs)

    def topk_widget(self, layer: int = -1, batch_index: int = 0):
        """circuitsvis TokenLogProbs view of one layer: colour = log-prob of the target,
        hover = the lens's top-k at that layer. Needs `targets`."""
        from hooklens.plotting.widgets import token_log_probs_view

        self._need("targets", "tokenizer")
        assert self._readout.stats.target_rank is not None
        assert self._readout.target_log_prob is not None
        row = layer_index(layer, self.num_layers)
        ids = self._layout.sequences(self.input_ids)[batch_index]
        per_seq = slice(batch_index * self.num_tokens, (batch_index + 1) * self.num_tokens - 1)
        formatter = TokenFormatter(max_string_len=None)
        topk_ids = self._readout.topk_ids[row, per_seq].numpy()
        name = "output" if row == self.num_layers else f"layer {row}"
        return token_log_probs_view(
            prompt=formatter.format_ids(self.tokenizer, ids.numpy()).tolist(),
            topk_log_probs=self._readout.topk_log_probs[row, per_seq].numpy(),
            topk_tokens=formatter.format_ids(self.tokenizer, topk_ids).tolist(),
            target_ranks=(self._readout.stats.target_rank[row, per_seq] - 1).clamp_min(0).numpy(),
            target_log_probs=np.nan_to_num(self._readout.target_log_prob[row, per_seq].numpy()),
            title=f"Top-{self.topk} predictions at {name}",
        )
