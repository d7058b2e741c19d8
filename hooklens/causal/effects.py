"""How an intervention changes what each layer predicts: two-trajectory comparisons,
and per-layer effects over a batch of prompts with bootstrap confidence intervals.

Examples:
    >>> import numpy as np
    >>> effect = LayerEffect("Δ logit diff", np.random.default_rng(0).normal(1, 1, (40, 5)))
    >>> effect.low.shape, bool((effect.low <= effect.mean).all())
    ((5,), True)
    >>> fig = effect.figure()
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Int
from numpy.typing import NDArray
from torch import Tensor

from hooklens.core import ModelAdapter
from hooklens.errors import InputError
from hooklens.lenses.base import Lens
from hooklens.trajectory import PredictionTrajectory
from hooklens.trajectory.statistic import TrajectoryStatistic


@dataclass
class TrajectoryComparison:
    """A clean and a corrupted (or intervened) trajectory of the same prompts, compared
    at every layer and position.

    Examples:
        >>> from hooklens import LogitLens
        >>> from hooklens.causal.interventions import zero_ablation
        >>> lens, text = LogitLens.from_model(model), "The capital of France is"
        >>> clean = PredictionTrajectory.from_lens_and_model(lens, model, text)
        >>> ablated = PredictionTrajectory.from_lens_and_model(
        ...     lens, model, text, fwd_hooks=[zero_ablation(model, "attn", 1)])
        >>> comparison = compare(clean, ablated)
        >>> comparison.js_divergence().stats.shape  # [layers + output, pos]
        (5, 6)
        >>> fig = comparison.js_divergence().figure()
    """

    clean: PredictionTrajectory
    corrupted: PredictionTrajectory

    def __post_init__(self) -> None:
        self.clean.check_comparable(self.corrupted)

    def kl_divergence(self, units: str = "nats") -> TrajectoryStatistic:
        """KL(clean ‖ corrupted) per layer and position."""
        stat = self.clean.kl_divergence(self.corrupted, units=units)  # type: ignore[arg-type]
        return replace(stat, name="KL(clean ‖ corrupted)")

    def js_divergence(self, units: str = "nats") -> TrajectoryStatistic:
        stat = self.clean.js_divergence(self.corrupted, units=units)  # type: ignore[arg-type]
        return replace(stat, name="JS(clean, corrupted)")

    def total_variation(self) -> TrajectoryStatistic:
        return replace(self.clean.total_variation(self.corrupted), name="TV(clean, corrupted)")

    def log_prob_diff_change(self, units: str = "nats") -> TrajectoryStatistic:
        """Corrupted minus clean `log p(target) − log p(anti-target)`; both trajectories
        need `targets` and `anti_targets`."""
        clean = self.clean.log_prob_diff(units=units)  # type: ignore[arg-type]
        corrupted = self.corrupted.log_prob_diff(units=units)  # type: ignore[arg-type]
        return replace(
            clean,
            name="Δ log prob diff (corrupted − clean)",
            stats=corrupted.stats - clean.stats,
            trajectory_labels=None,
            max=None,
            min=None,
        )


def compare(clean: PredictionTrajectory, corrupted: PredictionTrajectory) -> TrajectoryComparison:
    """Pair two trajectories of the same prompts for comparison (see TrajectoryComparison)."""
    return TrajectoryComparison(clean, corrupted)


# What `bootstrap_ci` returns per bound: a numpy scalar for 1-d values, else an array.
Estimate = NDArray[np.floating] | np.floating


def bootstrap_ci(
    values: NDArray[np.floating] | Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[Estimate, Estimate, Estimate]:
    """`(mean, low, high)` over axis 0: the percentile bootstrap interval of the mean
    (numpy scalars for 1-d `values`, arrays of the trailing shape otherwise).

    Resamples the rows (prompts) with replacement `n_resamples` times; NaN rows are
    ignored per column.
    """
    data = np.asarray(values, dtype=float)
    if data.shape[0] < 2:
        raise InputError(f"need at least 2 values to bootstrap, got {data.shape[0]}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, data.shape[0], size=(n_resamples, data.shape[0]))
    means = np.nanmean(data[draws], axis=1)  # [resample, ...]
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(means, [alpha, 1 - alpha], axis=0)
    return np.nanmean(data, axis=0), low, high


@dataclass
class LayerEffect:
    """A per-prompt, per-layer quantity (`values`: `[prompt, layer]`, last column the
    model's output) with its mean and bootstrap confidence interval per layer."""

    name: str
    values: NDArray[np.floating]
    confidence: float = 0.95
    layer_labels: Sequence[str] | None = None
    mean: NDArray[np.floating] = field(init=False)
    low: NDArray[np.floating] = field(init=False)
    high: NDArray[np.floating] = field(init=False)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=float)
        if self.values.ndim != 2:
            raise InputError(f"values must be [prompt, layer], got {self.values.shape}")
        bounds = bootstrap_ci(self.values, confidence=self.confidence)  # [layer] each
        self.mean, self.low, self.high = (np.asarray(bound) for bound in bounds)
        if self.layer_labels is None:
            n = self.values.shape[1]
            self.layer_labels = [*map(str, range(n - 1)), "output"]

    def __repr__(self) -> str:
        return (
            f"LayerEffect({self.name!r}, prompts={self.values.shape[0]}, "
            f"layers={self.values.shape[1]}, output mean {self.mean[-1]:.3g} "
            f"[{self.low[-1]:.3g}, {self.high[-1]:.3g}] at {self.confidence:.0%})"
        )

    def figure(self, title: str | None = None) -> go.Figure:
        """Mean per layer with the confidence band."""
        x = list(self.layer_labels or [])
        band = go.Scatter(
            x=x + x[::-1],
            y=np.concatenate([self.high, self.low[::-1]]),
            fill="toself",
            fillcolor="rgba(31, 119, 180, 0.2)",
            line={"width": 0},
            hoverinfo="skip",
            name=f"{self.confidence:.0%} CI",
        )
        line = go.Scatter(x=x, y=self.mean, mode="lines+markers", name="mean")
        return go.Figure([band, line]).update_layout(
            title=title or f"{self.name} ({self.values.shape[0]} prompts)",
            xaxis_title="layer",
            yaxis_title=self.name,
        )


def set_log_prob(log_probs: Tensor, ids: Tensor) -> Tensor:
    """log Σ_{t ∈ ids} p(t) per row: the log-probability of a set of tokens; `ids` is
    `[batch, k]` with −1 as padding."""
    picked = log_probs.gather(-1, ids.clamp(min=0).expand(*log_probs.shape[:-1], -1))
    return picked.masked_fill(ids < 0, -torch.inf).logsumexp(-1)


def answer_log_prob_diff(
    lens: Lens,
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    targets: Int[Tensor, "batch k"] | Int[Tensor, " batch"],
    anti_targets: Int[Tensor, "batch k"] | Int[Tensor, " batch"],
    *,
    position: int = -1,
    fwd_hooks: Sequence[tuple[Any, Any]] = (),
) -> NDArray[np.floating]:
    """`[prompt, layer + output]`: log p(targets) − log p(anti-targets) at `position`,
    read by `lens` at every layer (the last column is the model's own output).

    `targets` / `anti_targets` hold sets of token ids per prompt (`[batch, k]`, −1 as
    padding; a `[batch]` tensor is one token each); a set's probability is the sum of its
    tokens' probabilities, as in the greater-than task.
    """
    adapter = ModelAdapter(model)
    targets, anti_targets = (t if t.ndim == 2 else t[:, None] for t in (targets, anti_targets))
    names = set(adapter.residual_hook_names(lens.component))
    hooks = model.hooks(fwd_hooks=list(fwd_hooks)) if fwd_hooks else contextlib.nullcontext()
    with torch.no_grad(), hooks:
        logits, cache = model.run_with_cache(
            tokens.to(adapter.device), names_filter=lambda name: name in names
        )
    rows = []
    with torch.no_grad():
        for layer in range(lens.n_layers):
            hidden = cache[adapter.hook_name(lens.component, layer)][:, position]
            rows.append(torch.log_softmax(lens(hidden, layer).float(), -1))
        rows.append(torch.log_softmax(logits[:, position].float(), -1))
        log_probs = torch.stack(rows, 1).cpu()  # [batch, layer + 1, vocab]
        diff = set_log_prob(log_probs, targets[:, None]) - set_log_prob(
            log_probs, anti_targets[:, None]
        )
    return diff.numpy()
