"""Which lens to trust, per layer: the same per-layer numbers for every lens.

For each lens and layer: KL(output ‖ lens), cross-entropy of the next token, entropy and
top-1 agreement with the model, averaged over the cells that have them (padding is left
out; cross-entropy needs a target). `hooklens eval` averages them over held-out text
(`hooklens.evaluation.held_out.evaluate_lenses`), the report over its own text; both show
them as a table and a figure.

Examples:
    >>> from hooklens import LogitLens, PredictionTrajectory, next_token_targets
    >>> logit_trajectory = PredictionTrajectory.from_lens_and_cache(
    ...     LogitLens.from_model(model), tokens, cache, logits, targets=next_token_targets(tokens))
    >>> per_layer = {"logit lens": layer_means(logit_trajectory)}
    >>> sorted(per_layer["logit lens"])
    ['cross_entropy', 'entropy', 'kl_to_output', 'top1_agreement']
    >>> print(markdown_table(per_layer, "kl_to_output"))
    | layer | logit lens |
    |---:|---:|
    | 0 | ... |
    | 1 | ... |
    | 2 | ... |
    | 3 | ... |
    | output | 0.000 |
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from hooklens.trajectory import PredictionTrajectory

METRICS = ("kl_to_output", "cross_entropy", "entropy", "top1_agreement")
TITLES = {
    "kl_to_output": "KL(output ‖ lens), nats",
    "cross_entropy": "cross-entropy, nats",
    "entropy": "entropy, nats",
    "top1_agreement": "top-1 agreement with the model",
    "cross_entropy_bits_per_byte": "cross-entropy, bits per byte",
    "marginal_kl_to_output": "KL(output marginal ‖ lens marginal), nats",
}
# What the README and the report show: how close to the model, how good a predictor.
SHOWN = ("kl_to_output", "cross_entropy", "top1_agreement")

PerLayer = Mapping[str, Mapping[str, Sequence[float]]]  # {lens: {metric: [per layer]}}


def layer_sums(trajectory: PredictionTrajectory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{metric: (sum, count)}`, each `[n_layers + 1]`, over the trajectory's cells.

    Cells without a value (padding; cross-entropy where there is no target) count for
    nothing, so sums of several trajectories divide into exact means.
    """
    top_ids, _ = trajectory.top_predictions()
    agree = (top_ids[..., 0] == top_ids[..., -1:, :, 0]).double().numpy()
    if trajectory.attention_mask is not None:  # [..., pos] → every layer's padded cells
        padded = ~trajectory.attention_mask.numpy()[..., None, :]
        agree = np.where(np.broadcast_to(padded, agree.shape), np.nan, agree)
    values = {
        "kl_to_output": trajectory.forward_kl().stats,
        "cross_entropy": trajectory.cross_entropy().stats,
        "entropy": trajectory.entropy().stats,
        "top1_agreement": agree,
    }
    sums = {}
    for metric, cells in values.items():  # [..., layer, pos] → per layer
        per_layer = np.moveaxis(np.asarray(cells, dtype=np.float64), -2, 0)
        per_layer = per_layer.reshape(per_layer.shape[0], -1)
        sums[metric] = (np.nansum(per_layer, axis=1), np.isfinite(per_layer).sum(axis=1))
    return sums


def add_layer_sums(totals: dict[str, list], trajectory: PredictionTrajectory) -> dict[str, list]:
    """Add `trajectory`'s `layer_sums` into running `{metric: [sum, count]}` totals (in
    place, and returned), for means over many trajectories."""
    for metric, (total, count) in layer_sums(trajectory).items():
        previous = totals.get(metric, [0.0, 0])
        totals[metric] = [previous[0] + total, previous[1] + count]
    return totals


def layer_means(trajectory: PredictionTrajectory) -> dict[str, list[float]]:
    """`{metric: [per layer]}`: the mean of each metric over the trajectory's cells."""
    return {
        metric: (total / np.maximum(count, 1)).tolist()
        for metric, (total, count) in layer_sums(trajectory).items()
    }


def _layer_labels(n_rows: int) -> list[str]:
    return [*map(str, range(n_rows - 1)), "output"]


def markdown_table(per_layer: PerLayer, metric: str, digits: int = 3) -> str:
    """One row per layer, one column per lens: `metric` as a Markdown table."""
    names = list(per_layer)
    n_rows = len(per_layer[names[0]][metric])
    lines = [
        f"| layer | {' | '.join(names)} |",
        "|---:|" + "---:|" * len(names),
    ]
    for row, label in enumerate(_layer_labels(n_rows)):
        cells = " | ".join(f"{per_layer[name][metric][row]:.{digits}f}" for name in names)
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


def html_table(per_layer: PerLayer, metrics: Sequence[str] = SHOWN, digits: int = 3) -> str:
    """One row per layer; for each metric, one column per lens (escaped HTML)."""
    names = list(per_layer)
    n_rows = len(per_layer[names[0]][metrics[0]])
    head = "".join(
        f'<th colspan="{len(names)}">{html.escape(TITLES.get(m, m))}</th>' for m in metrics
    )
    sub = "".join(f"<th>{html.escape(name)}</th>" for _ in metrics for name in names)
    rows = []
    for row, label in enumerate(_layer_labels(n_rows)):
        cells = "".join(
            f"<td>{per_layer[name][metric][row]:.{digits}f}</td>"
            for metric in metrics
            for name in names
        )
        rows.append(f"<tr><th>{label}</th>{cells}</tr>")
    return (
        '<table class="lens-comparison"><thead>'
        f'<tr><th rowspan="2">layer</th>{head}</tr><tr>{sub}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def figure(
    per_layer: PerLayer, metric: str = "kl_to_output", title: str | None = None
) -> go.Figure:
    """One line per lens: `metric` against the layer (the last point is the output)."""
    fig = go.Figure()
    for name, metrics in per_layer.items():
        values = metrics[metric]
        fig.add_trace(
            go.Scatter(x=_layer_labels(len(values)), y=values, mode="lines+markers", name=name)
        )
    return fig.update_layout(
        title=title or f"{TITLES.get(metric, metric)} per layer",
        xaxis_title="layer",
        yaxis_title=TITLES.get(metric, metric),
    )
