"""circuitsvis views that work offline, in Jupyter, Colab and in our HTML report.

circuitsvis's own objects pick between an inlined bundle and a CDN import by probing
the network, and `str()` always gives the CDN version, which shows nothing offline.
`Widget` always inlines the bundle (about 1.3 MB) for notebooks, and the report inlines
it once for all widgets (`Widget.html(include_bundle=False)`).
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np


@lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The circuitsvis JavaScript bundle, which defines the global `CircuitsVis`."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    # A literal "</script>" inside inline code would end the script element.
    return path.read_text(encoding="utf-8").replace("</script>", "<\\/script>")


class Widget:
    """One circuitsvis component with its properties.

    Shows itself in a notebook (`_repr_html_`), and `save(path)` writes a standalone
    HTML file.
    """

    def __init__(self, component: str, title: str = "", **props: Any):
        self.component = component
        self.title = title
        self.props = props

    def __repr__(self) -> str:
        return f"Widget({self.component}, {self.title!r})"

    def html(self, include_bundle: bool = True) -> str:
        """HTML for the widget; without the bundle it needs a page that loaded it once."""
        from circuitsvis.utils.convert_props import convert_props

        element_id = f"hooklens-{uuid.uuid4().hex[:12]}"
        bundle = f"<script>{circuitsvis_bundle()}</script>\n" if include_bundle else ""
        heading = f"<h3>{html.escape(self.title)}</h3>\n" if self.title else ""
        return (
            f'{heading}{bundle}<div id="{element_id}" style="margin: 15px 0;"></div>\n'
            f"<script>CircuitsVis.render({element_id!r}, CircuitsVis.{self.component}, "
            f"{convert_props(self.props)});</script>\n"
        )

    def _repr_html_(self) -> str:
        return self.html(include_bundle=True)

    def save(self, path: str | Path) -> Path:
        """Write a standalone HTML file that works offline."""
        path = Path(path)
        path.write_text(f"<!DOCTYPE html><html><body>{self.html()}</body></html>")
        return path


def colored_tokens_by_layer(
    tokens: Sequence[str],
    values: np.ndarray,
    layer_labels: Sequence[str],
    title: str = "",
) -> Widget:
    """Input tokens coloured by `values`, one button per layer (ColoredTokensMulti).

    Args:
        tokens: `[pos]` the input tokens, as strings.
        values: `[layer, pos]` the value of each token at each layer (NaN shows as 0).
        layer_labels: `[layer]` the name of each layer's button.
        title: a heading above the widget.
    """
    matrix = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)  # [layer, pos]
    return Widget(
        "ColoredTokensMulti",
        title=title,
        tokens=[str(t) for t in tokens],
        values=matrix.T.tolist(),  # [pos, layer]
        labels=[f"layer {label}" for label in layer_labels],
    )


def token_log_probs_view(
    prompt: list[str],
    topk_log_probs: np.ndarray,
    topk_tokens: list[list[str]],
    target_ranks: np.ndarray,
    target_log_probs: np.ndarray,
    title: str = "",
) -> Widget:
    """Tokens coloured by the target's log-prob; hover shows the top-k (TokenLogProbs).

    Arrays are per position `0..pos-2` (the prediction for the next token); `prompt`
    has all `pos` tokens. Ranks are 0-based for circuitsvis.
    """
    return Widget(
        "TokenLogProbs",
        title=title,
        prompt=prompt,
        topKLogProbs=np.asarray(topk_log_probs, dtype=float).tolist(),
        topKTokens=topk_tokens,
        correctTokenRank=np.asarray(target_ranks, dtype=int).tolist(),
        correctTokenLogProb=np.asarray(target_log_probs, dtype=float).tolist(),
    )
