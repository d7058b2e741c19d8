"""The statistics of a trajectory: one table entry each — its name (the figure title,
tuned-lens's), units, bounds, what it needs, and how to read it off the readout — and
`TrajectoryStatistics`, the public method of each entry (a few lines apiece) and the
public label builders tuned-lens names `largest_prob_labels` and
`largest_delta_in_prob_labels`.

`Statistic.of` reads `[layer + 1, rows]` values off the single-trajectory `Readout`;
`PairStatistic.of` reads them off the `PairStats` of a comparison. Values are in nats
where `units` is `"nats"` (a method may convert them to bits), probabilities where it
is `"probs"`, and ranks where it is `""`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from hooklens._checks import positive_int
from hooklens.plotting.tokens import TokenFormatter
from hooklens.stats.reference import LN2
from hooklens.stats.streaming import PairStats
from hooklens.trajectory import inputs, labels
from hooklens.trajectory.inputs import Units
from hooklens.trajectory.labels import LABEL_TOPK, MAX_ENTRIES_TO_SHOW, MIN_PROB_DELTA
from hooklens.trajectory.readout import Readout
from hooklens.trajectory.state import TrajectoryState
from hooklens.trajectory.statistic import TrajectoryLabels, TrajectoryStatistic


@dataclass(frozen=True)
class Statistic:
    """A statistic of one trajectory."""

    name: str
    units: str  # "nats" (or bits, on request), "probs", or "" (a rank)
    of: Callable[[Readout], Tensor]
    min: float | None = None
    max: float | None = None  # None: unbounded, or the vocabulary size if `max_is_vocab`
    needs: tuple[str, ...] = ()  # "targets", "anti_targets"
    max_is_vocab: bool = False

    def bounds(self, vocab_size: int) -> dict[str, float]:
        """The `min`/`max` a `TrajectoryStatistic` is given (colour scale)."""
        top = float(vocab_size) if self.max_is_vocab else self.max
        return {k: v for k, v in (("min", self.min), ("max", top)) if v is not None}


@dataclass(frozen=True)
class PairStatistic:
    """A statistic comparing two trajectories (self, other)."""

    name: str
    units: str
    of: Callable[[PairStats], Tensor]
    min: float | None = None
    max: float | None = None

    def bounds(self) -> dict[str, float]:
        return {k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None}


def _rank(readout: Readout) -> Tensor:
    assert readout.stats.target_rank is not None
    ranks = readout.stats.target_rank.float()
    ranks[ranks == 0] = math.nan  # positions without a target
    return ranks


def _log_prob_diff(readout: Readout) -> Tensor:
    assert readout.target_log_prob is not None and readout.anti_target_log_prob is not None
    return readout.target_log_prob - readout.anti_target_log_prob


def _cross_entropy(readout: Readout) -> Tensor:
    assert readout.target_log_prob is not None
    return -readout.target_log_prob


ENTROPY = Statistic("Entropy", "nats", lambda r: r.stats.entropy, min=0.0)
FORWARD_KL = Statistic("Forward KL", "nats", lambda r: r.stats.reference_kl, min=0.0)  # type: ignore[arg-type,return-value]
CROSS_ENTROPY = Statistic("Cross Entropy", "nats", _cross_entropy, min=0.0, needs=("targets",))
RANK = Statistic("Rank", "", _rank, min=1.0, needs=("targets",), max_is_vocab=True)
MAX_PROBABILITY = Statistic(
    "Max Probability", "probs", lambda r: r.topk_log_probs[..., 0].exp(), min=0.0, max=1.0
)
TARGET_PROBABILITY = Statistic(
    "Target Probability",
    "probs",
    lambda r: _cross_entropy(r).neg().exp(),
    min=0.0,
    max=1.0,
    needs=("targets",),
)
LOG_PROB_DIFF = Statistic(
    "Log Prob Difference", "nats", _log_prob_diff, needs=("targets", "anti_targets")
)
# Between layers: row i is layer i+1's value minus layer i's (the last: output − last layer).
DELTA_LOG_PROB_DIFF = Statistic(
    "Δ Log Prob Difference",
    "nats",
    lambda r: _log_prob_diff(r)[1:] - _log_prob_diff(r)[:-1],
    needs=("targets", "anti_targets"),
)

KL = PairStatistic("KL(Self ‖ Other)", "nats", lambda p: p.kl, min=0.0)
JS = PairStatistic("JS(Self ‖ Other)", "nats", lambda p: p.js, min=0.0, max=LN2)
TV = PairStatistic("TV(Self ‖ Other)", "probs", lambda p: p.tv, min=0.0, max=1.0)


class TrajectoryStatistics(TrajectoryState):
    """The statistic methods of `PredictionTrajectory`, one per table entry above, and
    the labels they carry under tuned-lens's names (`largest_prob_labels`,
    `largest_delta_in_prob_labels`)."""

    def _single(
        self,
        statistic: Statistic,
        units: str,
        min_prob: float,
        topk: int,
        formatter: TokenFormatter | None,
    ) -> TrajectoryStatistic:
        """`statistic` of this trajectory, labelled with each cell's top-1 token."""
        self._need(*statistic.needs)
        units = inputs.checked_units(units) if statistic.units == "nats" else statistic.units
        # The labels of largest_prob_labels(..., max_entries_to_show=1), cached and shared.
        cells = self._top_prediction_labels(min_prob, topk, formatter)
        return self._statistic(
            statistic.name,
            statistic.of(self._readout),
            units,
            cells,
            statistic.bounds(self.vocab_size),
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
        return self._single(ENTROPY, units, min_prob, topk, formatter)

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
        return self._single(FORWARD_KL, units, min_prob, topk, formatter)

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
        return self._single(CROSS_ENTROPY, units, min_prob, topk, formatter)

    def target_probability(
        self,
        *,
        min_prob: float = 0.0,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """`p(target)`, the probability each layer gives the target token, in [0, 1]
        (NaN where a position has no target): `exp(-cross_entropy)`, read off the same
        pass. Label options as in `entropy`."""
        return self._single(TARGET_PROBABILITY, "probs", min_prob, topk, formatter)

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
        stat = self._single(RANK, "", min_prob, topk, formatter)
        if show_ranks and stat.trajectory_labels is not None:
            stat.trajectory_labels = labels.rank_labels(stat.trajectory_labels, stat.matrix)
        return stat

    def max_probability(
        self,
        *,
        min_prob: float = 0.0,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """Probability of each layer's most likely token. Label options as in `entropy`."""
        return self._single(MAX_PROBABILITY, "probs", min_prob, topk, formatter)

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
        if not delta:
            return self._single(LOG_PROB_DIFF, units, min_prob, topk, formatter)
        self._need(*DELTA_LOG_PROB_DIFF.needs)
        labels.probability(min_prob, "min_prob"), positive_int(topk, "topk")  # refused all the same
        steps = [f"{i}→{i + 1}" for i in range(self.num_layers - 1)]
        entry = DELTA_LOG_PROB_DIFF
        return self._statistic(
            entry.name,
            entry.of(self._readout),
            inputs.checked_units(units),
            None,
            entry.bounds(self.vocab_size),
            layer_labels=np.array([*steps, f"{self.num_layers - 1}→output"]),
        )

    def _compare(
        self,
        statistic: PairStatistic,
        other: Any,
        units: str,
        min_prob_delta: float,
        topk: int,
        formatter: TokenFormatter | None,
    ) -> TrajectoryStatistic:
        """`statistic` between self and `other`, labelled with the largest Δp."""
        units = inputs.checked_units(units) if statistic.units == "nats" else statistic.units
        cells = self.largest_delta_in_prob_labels(
            other, formatter, min_prob_delta, max_entries_to_show=1, topk=topk
        )
        pair = self._pair(other)  # the pass the labels made (cached), or one without Δp
        return self._statistic(statistic.name, statistic.of(pair), units, cells, statistic.bounds())

    # --- labels, under tuned-lens's names ----------------------------------------------

    def largest_prob_labels(
        self,
        formatter: TokenFormatter | None = None,
        min_prob: float = 0.0,
        topk: int = LABEL_TOPK,
        max_entries_to_show: int = MAX_ENTRIES_TO_SHOW,
    ) -> TrajectoryLabels | None:
        """Labels from each layer's most likely tokens (tuned-lens's
        `largest_prob_labels`): those every single-trajectory statistic carries.

        Args:
            formatter: how tokens are written (default `TokenFormatter()`).
            min_prob: a cell shows its top-1 token only where that token's probability
                is at least this (blank elsewhere).
            topk: how many of the most likely tokens the hover lists; at most the
                `topk` the trajectory kept when built (`traj.topk`).
            max_entries_to_show: how many sequences of a batch the hover lists side by
                side (the statistics' own figures list the first one).

        Returns:
            `TrajectoryLabels` whose `label_strings` are `[layer + 1, pos]` (the top-1
            token; `*` where the sequences of a batch disagree) and whose
            `hover_over_entries` are `[layer + 1, pos, k, 2 × n]`: row i holds the i-th
            most likely token and its probability for each of the first
            `n = min(batch, max_entries_to_show)` sequences. None without a tokenizer,
            as in tuned-lens.

        Examples:
            >>> from hooklens import PredictionTrajectory
            >>> traj = PredictionTrajectory.from_lens_and_cache(lens, tokens, cache, logits)
            >>> labels = traj.largest_prob_labels(min_prob=0.1, topk=3)
            >>> labels.label_strings.shape, labels.hover_over_entries.shape
            ((5, 6), (5, 6, 3, 2))
        """
        sequences = positive_int(max_entries_to_show, "max_entries_to_show")
        cells = self._top_prediction_labels(min_prob, topk, formatter, sequences)
        if cells is None:
            return None
        # A copy: the statistics share the cached labels, and a caller may edit these.
        hover = cells.hover_over_entries
        return TrajectoryLabels(cells.label_strings.copy(), None if hover is None else hover.copy())

    def largest_delta_in_prob_labels(
        self,
        other: Any,
        formatter: TokenFormatter | None = None,
        min_prob_delta: float = MIN_PROB_DELTA,
        max_entries_to_show: int = MAX_ENTRIES_TO_SHOW,
        topk: int = LABEL_TOPK,
    ) -> TrajectoryLabels | None:
        """Labels from the largest changes in probability from self to `other`
        (tuned-lens's `largest_delta_in_prob_labels`): those every comparison carries.

        Args:
            other: a trajectory of the same shape (lens-built or `from_log_probs`).
            formatter: how tokens are written (default `TokenFormatter()`).
            min_prob_delta: a cell shows the token whose probability changed most
                (other − self) only where |Δp| is at least this and not zero.
            max_entries_to_show: how many sequences of a batch the hover lists side by
                side (the comparisons' own figures list the first one).
            topk: how many of the largest changes the hover lists, each with its
                signed Δp; they come from the comparison's streaming pass.

        Returns:
            `TrajectoryLabels`: `label_strings` `[layer + 1, pos]`, `hover_over_entries`
            `[layer + 1, pos, k, 2 × n]` (token, Δp) pairs of the first
            `n = min(batch, max_entries_to_show)` sequences, blank for a token whose
            probability did not change. None without a tokenizer, as in tuned-lens.

        Examples:
            >>> from hooklens import LogitLens, PredictionTrajectory
            >>> traj = PredictionTrajectory.from_lens_and_cache(lens, tokens, cache, logits)
            >>> logit = PredictionTrajectory.from_lens_and_cache(
            ...     LogitLens.from_model(model), tokens, cache, logits)
            >>> traj.largest_delta_in_prob_labels(logit, topk=4).hover_over_entries.shape
            (5, 6, 4, 2)
        """
        min_prob_delta = labels.probability(min_prob_delta, "min_prob_delta")
        topk = positive_int(topk, "topk")
        sequences = positive_int(max_entries_to_show, "max_entries_to_show")
        if self.tokenizer is None:
            self.check_comparable(other)
            return None
        pair = self._pair(other, delta_k=topk)
        by_sequence = self._layout.by_sequence
        return labels.delta_labels(
            self.tokenizer, pair, by_sequence, min_prob_delta, topk, formatter, sequences
        )

    def kl_divergence(
        self,
        other: Any,
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
        return self._compare(KL, other, units, min_prob_delta, topk, formatter)

    def js_divergence(
        self,
        other: Any,
        units: Units = "nats",
        *,
        min_prob_delta: float = MIN_PROB_DELTA,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """Jensen–Shannon divergence to `other`: symmetric, in [0, ln 2] nats.

        Labels as in `kl_divergence`."""
        return self._compare(JS, other, units, min_prob_delta, topk, formatter)

    def total_variation(
        self,
        other: Any,
        *,
        min_prob_delta: float = MIN_PROB_DELTA,
        topk: int = LABEL_TOPK,
        formatter: TokenFormatter | None = None,
    ) -> TrajectoryStatistic:
        """Total variation distance ½‖p − q‖₁ to `other`, in [0, 1].

        Labels as in `kl_divergence`."""
        return self._compare(TV, other, "probs", min_prob_delta, topk, formatter)
