"""One self-contained HTML report of a model's prediction trajectories.

plotly.js and the circuitsvis bundle are inlined once each, compressed, so the file
opens with no network (about 2.4 MB plus the data); it fits a window of 1,280 px or
more, long inputs scrolling inside each heatmap (`hooklens.plotting.page`).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from hooklens._checks import context_length, cut_notice
from hooklens.artifacts import atomic_write_text
from hooklens.core import ModelAdapter
from hooklens.errors import InputError, TextCutWarning, warn
from hooklens.evaluation import per_layer
from hooklens.lenses import Lens, LogitLens
from hooklens.plotting.page import Page, slug
from hooklens.plotting.widgets import Widget
from hooklens.trajectory import PredictionTrajectory, next_token_targets

DEFAULT_STATISTICS = ("forward_kl", "entropy", "cross_entropy", "rank")


@dataclass
class ReportSection:
    """A heading with figures and widgets under it."""

    title: str
    text: str = ""
    figures: list[go.Figure] = field(default_factory=list)
    widgets: list[Widget] = field(default_factory=list)
    # Markup we built and escaped ourselves (`per_layer.html_table`), shown as is.
    html: str = ""


def render_report(sections: Sequence[ReportSection], title: str = "hooklens report") -> str:
    """The HTML document: a table of contents, then every section's figures and widgets.

    It fits the window (1,280 px wide or more): figures take the page's width and a
    heatmap of a long input scrolls inside itself, its title, layer axis and colour bar
    in view. plotly.js and circuitsvis are inlined once each (compressed), and data that
    several figures share is written once (`hooklens.plotting.page`).
    """
    page = Page()
    taken: set[str] = set()
    contents = []
    body = []
    for section in sections:
        anchor = slug(section.title, taken)
        contents.append((anchor, section.title))
        body.append(f'<section id="{anchor}"><h2>{html.escape(section.title)}</h2>')
        if section.text:
            body.append(f"<p>{html.escape(section.text)}</p>")
        if section.html:
            body.append(f'<div class="hooklens-scroll">{section.html}</div>')
        body.extend(page.figure(figure) for figure in section.figures)
        body.extend(page.widget(widget) for widget in section.widgets)
        body.append("</section>")
    return page.document(title, "\n".join(body), contents)


def trajectory_report(
    model: Any,
    text: str,
    lenses: Mapping[str, Lens] | None = None,
    path: str | os.PathLike = "hooklens-report.html",
    *,
    statistics: Sequence[str] = DEFAULT_STATISTICS,
    max_tokens: int = 64,
    title: str | None = None,
) -> Path:
    """Write a report of `text` read by the logit lens and any other `lenses`.

    For each lens: one heatmap per statistic (cells show the top prediction, hover the
    top 5) and two circuitsvis views; with more than one lens, the Jensen–Shannon
    divergence between the logit lens and each other lens, and a per-layer table and
    figures of KL to the output, cross-entropy and top-1 agreement for every lens
    (`hooklens.evaluation.per_layer`).

    A text longer than `max_tokens` tokens (or than the model's context) is cut to its
    first `max_tokens`: the report's Input section says so, and a `TextCutWarning`
    names the `max_tokens` that reads it all (`cut_notice`). `max_tokens` below 1
    raises `InputError`.

    Examples:
        >>> from hooklens import models, TunedLens
        >>> model = models.load("smollm2-135m")                          # doctest: +SKIP
        >>> # here: the examples' tiny model, and a lens saved for it
        >>> TunedLens.from_model(model).save("lens")
        >>> path = trajectory_report(model, "The capital of France is",
        ...                          {"tuned": TunedLens.load("lens", model)})
        >>> path.name  # open it in a browser
        'hooklens-report.html'
    """
    if not text or not text.strip():
        raise InputError("the report needs some text to read: got an empty string")
    if max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
    if Path(path).is_dir():
        raise InputError(
            f"{path} is a directory; give a file name like {Path(path) / 'report.html'}"
        )
    adapter = ModelAdapter(model)
    all_tokens = model.to_tokens(text, truncate=False)
    tokens = all_tokens[:, : min(max_tokens, context_length(model, max_tokens))]
    read = f"{tokens.shape[-1]} tokens"
    notice = cut_notice(model, text, max_tokens)
    if notice is not None:
        read = notice
        warn(notice, TextCutWarning)
    all_lenses: dict[str, Lens] = {"logit lens": LogitLens.from_model(adapter)}
    all_lenses.update(lenses or {})
    names = {
        name for lens in all_lenses.values() for name in adapter.residual_hook_names(lens.component)
    }
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    targets = next_token_targets(tokens)
    trajectories = {
        name: PredictionTrajectory.from_lens_and_cache(lens, tokens, cache, logits, targets=targets)
        for name, lens in all_lenses.items()
    }
    sections = [
        ReportSection(
            "Input",
            f"{adapter.model_name} ({adapter.kind}, {adapter.n_layers} layers); "
            f"{read}: {text[:500]}",
        )
    ]
    for name, trajectory in trajectories.items():
        figures = []
        for statistic in statistics:
            stat = getattr(trajectory, statistic)()
            if stat.max is None:
                # Unbounded statistics (KL, cross-entropy) have a few huge cells (layer 0):
                # saturate the colour there so the rest keeps its contrast; hover keeps
                # the true values.
                stat = replace(stat, max=float(np.nanpercentile(stat.matrix, 95)))
            figures.append(stat.figure(title=f"{stat.name}: {name}"))
        sections.append(
            ReportSection(
                name.capitalize(),
                repr(trajectory.lens),
                figures=figures,
                widgets=[
                    trajectory.entropy().widget(),
                    trajectory.topk_widget(layer=adapter.n_layers // 2),
                ],
            )
        )
    baseline = trajectories["logit lens"]
    for name, trajectory in trajectories.items():
        if trajectory is baseline:
            continue
        js = baseline.js_divergence(trajectory)
        sections.append(
            ReportSection(
                f"Logit lens vs {name}",
                "Jensen–Shannon divergence between the two lenses' predictions (nats).",
                figures=[js.figure(title=f"JS divergence: logit lens vs {name}")],
            )
        )
    if len(trajectories) > 1:
        sections.append(_comparison_section(trajectories))
    document = render_report(sections, title or f"hooklens: {adapter.model_name}")
    return atomic_write_text(path, document)


def _comparison_section(trajectories: Mapping[str, PredictionTrajectory]) -> ReportSection:
    """Which lens to trust, per layer, on this text: a table and two figures."""
    layer_numbers = {name: per_layer.layer_means(t) for name, t in trajectories.items()}
    n_tokens = next(iter(trajectories.values())).num_tokens
    return ReportSection(
        "Which lens to trust, per layer",
        f"Means over this text's {n_tokens} tokens (cross-entropy over those with a next "
        "token): KL to the model's output and top-1 agreement say how closely a lens "
        "reads what the model will predict; `hooklens eval` gives the same table on "
        "held-out text.",
        figures=[
            per_layer.figure(layer_numbers, metric) for metric in ("kl_to_output", "top1_agreement")
        ],
        html=per_layer.html_table(layer_numbers),
    )
