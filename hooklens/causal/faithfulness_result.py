"""The result of a faithfulness experiment (`hooklens.causal.faithfulness`): per-layer
effects of each causal direction on the lens and on the model, their rank correlation,
and the table, figure and JSON that report them. `hooklens.causal.faithfulness`
re-exports every name here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from hooklens.errors import InputError

# --- rank correlation --------------------------------------------------------------------


def average_ranks(values: ArrayLike) -> NDArray[np.float64]:
    """1-based ranks of `values`, ties given the mean of the ranks they span."""
    data = np.asarray(values, dtype=float).ravel()
    order = np.argsort(data, kind="mergesort")
    ranks = np.empty(len(data))
    start = 0
    while start < len(data):
        stop = start
        while stop + 1 < len(data) and data[order[stop + 1]] == data[order[start]]:
            stop += 1
        ranks[order[start : stop + 1]] = 0.5 * (start + stop) + 1.0
        start = stop + 1
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation ρ of `x` and `y` (ties: average ranks).

    NaN when fewer than two values, or when either side is constant (no ranking).

    Examples:
        >>> spearman([1, 2, 3], [10, 30, 20])
        0.5
    """
    a, b = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if a.shape != b.shape:
        raise InputError(f"spearman needs two arrays of one length, got {a.size} and {b.size}")
    if a.size < 2:
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / scale if scale > 0 else math.nan


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerFaithfulness:
    """One lens row: each causal direction's effect on the lens and on the model (nats).

    `energies` are the lens's own KLs on the fit tokens (from the basis extraction);
    `lens_effects` and `model_effects` are measured on the held-out tokens.
    """

    layer: int
    energies: NDArray[np.float64]
    lens_effects: NDArray[np.float64]
    model_effects: NDArray[np.float64]
    vectors: Float[Tensor, "d_model k"] | None = field(default=None, repr=False)

    @property
    def k(self) -> int:
        return len(self.lens_effects)

    @property
    def spearman(self) -> float:
        """Rank correlation of the lens effects with the model effects."""
        return spearman(self.lens_effects, self.model_effects)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "k": self.k,
            "spearman": _json_float(self.spearman),
            "energies": [_json_float(v) for v in self.energies],
            "lens_effects": [_json_float(v) for v in self.lens_effects],
            "model_effects": [_json_float(v) for v in self.model_effects],
        }


@dataclass(frozen=True)
class FaithfulnessResult:
    """Faithfulness of one lens at several rows; see the module docstring.

    Examples:
        >>> from hooklens.causal import lens_faithfulness
        >>> tokens = torch.randint(4, 96, (4, 12))
        >>> result = lens_faithfulness(model, lens, tokens, layers=[1, 2], k=2)
        >>> result
        FaithfulnessResult(lens='TunedLens', model='tiny-llama', mode='mean', ...
          layer   1: k=2, ρ=..., mean lens KL ..., mean model KL ...
          layer   2: k=2, ρ=..., mean lens KL ..., mean model KL ...)
        >>> rho, table, fig = result[2].spearman, result.table(), result.figure()
    """

    lens: str
    model: str
    layers: tuple[LayerFaithfulness, ...]
    mode: str = "mean"
    component: str = "resid_pre"
    fit_tokens: int = 0
    eval_tokens: int = 0

    def __getitem__(self, layer: int) -> LayerFaithfulness:
        for row in self.layers:
            if row.layer == layer:
                return row
        raise KeyError(f"no layer {layer} here; layers are {[r.layer for r in self.layers]}")

    def __repr__(self) -> str:
        lines = [
            f"FaithfulnessResult(lens={self.lens!r}, model={self.model!r}, mode={self.mode!r}, "
            f"component={self.component!r}, fit_tokens={self.fit_tokens}, "
            f"eval_tokens={self.eval_tokens},"
        ]
        for row in self.layers:
            lines.append(
                f"  layer {row.layer:>3}: k={row.k}, ρ={row.spearman:+.2f}, mean lens KL "
                f"{np.mean(row.lens_effects):.3g}, mean model KL {np.mean(row.model_effects):.3g}"
            )
        return "\n".join(lines) + ")"

    def table(self) -> str:
        """Markdown: layer | lens | k | Spearman ρ | mean lens KL | mean model KL."""
        return faithfulness_table(self)

    def figure(self, *, log: bool = True) -> go.Figure:
        """Lens effect against model effect per direction, one trace per layer."""
        return faithfulness_figure(self, log=log)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers and lists (NaN as None): `json.dumps` takes it as is."""
        return {
            "lens": self.lens,
            "model": self.model,
            "mode": self.mode,
            "component": self.component,
            "fit_tokens": self.fit_tokens,
            "eval_tokens": self.eval_tokens,
            "units": "nats",
            "layers": [row.to_dict() for row in self.layers],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def faithfulness_table(*results: FaithfulnessResult) -> str:
    """One Markdown table for several lenses' results, rows grouped by layer.

    Examples:
        >>> from hooklens import LogitLens
        >>> from hooklens.causal import lens_faithfulness
        >>> tokens = torch.randint(4, 96, (4, 12))
        >>> logit_result = lens_faithfulness(model, LogitLens.from_model(model), tokens, [2], k=2)
        >>> tuned_result = lens_faithfulness(model, lens, tokens, [2], k=2)  # lens: a TunedLens
        >>> print(faithfulness_table(logit_result, tuned_result))
        | layer | lens | k | Spearman ρ | mean lens KL | mean model KL |
        |---:|:---|---:|---:|---:|---:|
        | 2 | LogitLens | 2 | ... |
        | 2 | TunedLens | 2 | ... |
    """
    if not results:
        raise InputError("faithfulness_table needs at least one FaithfulnessResult")
    header = "| layer | lens | k | Spearman ρ | mean lens KL | mean model KL |"
    lines = [header, "|---:|:---|---:|---:|---:|---:|"]
    rows = [
        (row.layer, index, result, row)
        for index, result in enumerate(results)
        for row in result.layers
    ]
    for _, _, result, row in sorted(rows, key=lambda item: (item[0], item[1])):
        rho = "n/a" if math.isnan(row.spearman) else f"{row.spearman:+.2f}"
        lines.append(
            f"| {row.layer} | {result.lens} | {row.k} | {rho} | "
            f"{np.mean(row.lens_effects):.3g} | {np.mean(row.model_effects):.3g} |"
        )
    return "\n".join(lines)


def faithfulness_figure(*results: FaithfulnessResult, log: bool = True) -> go.Figure:
    """Scatter of lens effect (x) against model effect (y), one trace per lens and layer.

    With `log` (default) both axes are logarithmic; effects ≤ 0 are then not drawn.
    """
    if not results:
        raise InputError("faithfulness_figure needs at least one FaithfulnessResult")
    symbols = ["circle", "diamond", "square", "triangle-up", "x", "cross"]
    traces = []
    for index, result in enumerate(results):
        for row in result.layers:
            name = f"layer {row.layer} (ρ = {row.spearman:+.2f})"
            traces.append(
                go.Scatter(
                    x=row.lens_effects,
                    y=row.model_effects,
                    mode="markers",
                    name=f"{result.lens}, {name}" if len(results) > 1 else name,
                    marker={"symbol": symbols[index % len(symbols)], "size": 9},
                    text=[f"direction {j}" for j in range(row.k)],
                    hovertemplate="%{text}<br>lens KL %{x:.3g}<br>model KL %{y:.3g}",
                )
            )
    axis = "log" if log else "linear"
    lenses = ", ".join(result.lens for result in results)
    return go.Figure(traces).update_layout(
        title=f"Causal-basis faithfulness ({lenses}; {results[0].mode} ablation)",
        xaxis={"title": "lens effect: KL(lens ‖ lens ablated), nats", "type": axis},
        yaxis={"title": "model effect: KL(output ‖ output ablated), nats", "type": axis},
    )


__all__ = [
    "FaithfulnessResult",
    "LayerFaithfulness",
    "average_ranks",
    "faithfulness_figure",
    "faithfulness_table",
    "spearman",
]
