"""Internal. `TrajectoryState`: what every `PredictionTrajectory` holds and the
machinery its public methods share (the pass at construction, the cached pair pass,
building a `TrajectoryStatistic`, the label cache).

The facade (`prediction.PredictionTrajectory`) and its statistic methods
(`statistics.TrajectoryStatistics`) are subclasses; users never see this class.
"""

from __future__ import annotations

import weakref
from typing import Any, TypeVar

import numpy as np
from torch import Tensor

from hooklens._checks import positive_int
from hooklens.errors import InputError, InputTypeError
from hooklens.lenses.base import Lens
from hooklens.plotting.tokens import TokenFormatter
from hooklens.stats.reference import LN2
from hooklens.stats.streaming import PairStats
from hooklens.trajectory import inputs, labels, readout
from hooklens.trajectory.layout import RowLayout
from hooklens.trajectory.readout import Readout
from hooklens.trajectory.rows import MaskedRows, RowSource
from hooklens.trajectory.statistic import TrajectoryLabels, TrajectoryStatistic

S = TypeVar("S", bound="TrajectoryState")


def kept_topk(topk: Any, vocab_size: int) -> int:
    """The `topk` a trajectory keeps: `labels.DEFAULT_TOPK` clamped to the vocabulary when not
    given; one given must lie in `1..vocab_size` (`InputError` saying the bound)."""
    if topk is None:
        return min(labels.DEFAULT_TOPK, vocab_size)
    number = positive_int(topk, "topk")
    if number > vocab_size:
        raise InputError(
            f"topk must be at most the vocabulary's {vocab_size} tokens, got {number}: pass "
            f"topk={vocab_size} or fewer, or leave it out (the default keeps "
            f"min({labels.DEFAULT_TOPK}, vocabulary))"
        )
    return number


class TrajectoryState:
    """Internal. The state of a trajectory and the steps its methods share."""

    def _setup(
        self,
        source: RowSource,
        input_ids: Tensor,
        *,
        targets: Any,
        anti_targets: Any,
        tokenizer: Any,
        mask_input: bool,
        topk: int | None,
        attention_mask: Any,
        readout_: Readout | None = None,
    ) -> None:
        """Everything a trajectory holds, whatever its source; runs the streaming pass
        unless `readout_` (of the same rows, from `slice_sequence`) is given."""
        self._source = source
        self.lens: Lens | None = source.lens
        self.residual_component: str | None = source.component
        self.input_ids = input_ids
        self.targets = inputs.as_long(targets, "targets")
        self.anti_targets = inputs.as_long(anti_targets, "anti_targets")
        self.tokenizer = tokenizer
        self.mask_input = mask_input
        self.topk = kept_topk(topk, source.vocab_size)
        inputs.check_token_ids(input_ids, self.targets, self.anti_targets, self.vocab_size)
        # 1 = a real token, 0 = padding (its cells are NaN and left out of every mean).
        self.attention_mask: Tensor | None = (
            None
            if attention_mask is None
            else inputs.attention_mask_tensor(attention_mask, self.input_ids.shape)
        )
        self.targets, self.anti_targets = inputs.drop_targets_in_padding(
            input_ids, self.attention_mask, self.targets, self.anti_targets
        )
        self._layout = RowLayout(tuple(input_ids.shape))
        self._rows = MaskedRows(source, input_ids) if mask_input else source
        self._pairs: weakref.WeakKeyDictionary[TrajectoryState, PairStats] = (
            weakref.WeakKeyDictionary()
        )
        self._labels: dict[tuple[float, int, int], TrajectoryLabels] = {}
        if readout_ is None:
            readout_ = readout.read(
                self._rows, self._layout.n_rows, self.targets, self.anti_targets, self.topk
            )
        self._readout = readout_

    @classmethod
    def _from_source(cls: type[S], source: RowSource, input_ids: Tensor, **settings: Any) -> S:
        trajectory = cls.__new__(cls)
        trajectory._setup(source, input_ids, **settings)
        return trajectory

    # --- shape ------------------------------------------------------------------------

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

    def __repr__(self) -> str:
        batch = f", batch={self.batch_shape}" if self.batch_shape else ""
        extras = "".join(
            f", {name}=yes"
            for name in ("targets", "anti_targets")
            if getattr(self, name) is not None
        )
        if (padding := inputs.padding_array(self.attention_mask)) is not None:
            extras += f", padded_positions={int(padding.sum())}"
        return (
            f"PredictionTrajectory(layers={self.num_layers}, pos={self.num_tokens}{batch}, "
            f"{self._source.describe()}{extras})"
        )

    # --- statistics -----------------------------------------------------------------------

    def _statistic(
        self,
        name: str,
        values: Tensor,
        units: str,
        trajectory_labels: TrajectoryLabels | None,
        bounds: dict[str, float],
        **kw: Any,
    ) -> TrajectoryStatistic:
        """A `TrajectoryStatistic` of `[layer + 1, rows]` values (nats → bits on request)."""
        scale = (lambda b: b / LN2) if units == "bits" else (lambda b: b)
        return TrajectoryStatistic(
            name=name,
            stats=self._layout.statistic(values, self.attention_mask, units),
            units=units,
            sequence_labels=self._sequence_labels(),
            sequence_tokens=self._sequence_labels(TokenFormatter(max_string_len=None)),
            trajectory_labels=trajectory_labels,
            padding=inputs.padding_array(self.attention_mask),
            **{bound: scale(value) for bound, value in bounds.items()},
            **kw,
        )

    def _need(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise InputError(
                f"this statistic needs {' and '.join(missing)}: pass them when building the "
                "trajectory (next_token_targets(input_ids) scores the next input token)"
            )

    # --- comparisons -------------------------------------------------------------------

    def check_comparable(self, other: TrajectoryState) -> None:
        """Refuse `other` unless it is a trajectory of the same shape and vocabulary.

        Every comparison (`kl_divergence(other)`, `js_divergence`, `total_variation`,
        `hooklens.causal.compare`) calls this first; call it yourself to check a pair early.

        Raises:
            InputTypeError: `other` is not a trajectory.
            InputError: the layers, positions, batch or vocabulary differ.
        """
        if not isinstance(other, TrajectoryState):
            raise InputTypeError(
                f"compare with another PredictionTrajectory, got {type(other).__name__}"
            )
        shape = (self.num_layers, self.num_tokens, self.batch_shape, self.vocab_size)
        if shape != (other.num_layers, other.num_tokens, other.batch_shape, other.vocab_size):
            raise InputError(
                "trajectories must have the same layers, positions, batch and vocabulary: "
                f"{self!r} vs {other!r}"
            )

    def _pair(self, other: TrajectoryState, delta_k: int = 0) -> PairStats:
        """The pair pass with `other` (cached), keeping at least `delta_k` largest Δp."""
        self.check_comparable(other)
        self._source.check_unchanged()
        other._source.check_unchanged()
        delta_k = min(delta_k, self.vocab_size)
        cached = self._pairs.get(other)
        if cached is None or cached.delta_k < delta_k:
            self._pairs[other] = readout.read_pair(
                self._rows,
                other._rows,
                self._layout.n_rows,
                self._readout.stats.logsumexp,
                other._readout.stats.logsumexp,
                delta_k,
            )
        return self._pairs[other]

    # --- labels ----------------------------------------------------------------------------

    def _sequence_labels(self, formatter: TokenFormatter | None = None) -> np.ndarray | None:
        sequences = self._layout.sequences(self.input_ids)
        return labels.sequence_labels(self.tokenizer, sequences, formatter)

    def _top_prediction_labels(
        self,
        min_prob: float,
        topk: int,
        formatter: TokenFormatter | None,
        sequences: int = 1,
    ) -> TrajectoryLabels | None:
        """Cells: the top-1 token where its probability ≥ `min_prob`; hover: the top
        `topk` (at most `self.topk`) of the first `sequences` sequences.

        Built once per setting and shared by all statistics of this trajectory.
        """
        min_prob = labels.probability(min_prob, "min_prob")
        k = min(positive_int(topk, "topk"), self.topk)
        if self.tokenizer is None:
            return None
        key = (min_prob, k, sequences)
        if formatter is None and key in self._labels:
            return self._labels[key]
        by_sequence = self._layout.by_sequence
        result = labels.top_prediction_labels(
            self.tokenizer,
            by_sequence(self._readout.topk_ids),
            by_sequence(self._readout.topk_log_probs),
            min_prob,
            k,
            formatter,
            sequences,
        )
        if formatter is None:
            self._labels[key] = result
        return result
