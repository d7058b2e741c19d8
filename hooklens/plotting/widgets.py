"""circuitsvis views that work offline, in Jupyter, Colab and in our HTML report.

circuitsvis's own objects pick between an inlined bundle and a CDN import by probing
the network, and `str()` always gives the CDN version, which shows nothing offline.
`Widget` always inlines the bundle (about 1.3 MB) for notebooks, and the report inlines
it once for all widgets (`hooklens.plotting.page.Page.widget`).
"""

from __future__ import annotations

import html
import json
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


def script_json(value: Any) -> str:
    """`value` as JSON that is safe inside an HTML `<script>` element."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


def _rounded(value: Any) -> Any:
    """`value` with numpy/torch arrays as lists and every float to 5 significant digits."""
    from circuitsvis.utils.convert_props import convert_prop_type

    value = convert_prop_type(value)
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    return value


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

    def props_json(self) -> str:
        """The properties as JSON for a `<script>`: floats to 5 significant digits (the
        widgets show at most 3 decimals), and `</` escaped so no string ends the script."""
        return script_json(_rounded(self.props))

    def html(self, include_bundle: bool = True) -> str:
        """HTML for the widget; without the bundle it needs a page that loaded it once."""
        element_id = f"hooklens-{uuid.uuid4().hex[:12]}"
        bundle = f"<script>{circuitsvis_bundle()}</script>\n" if include_bundle else ""
        heading = f"<h3>{html.escape(self.title)}</h3>\n" if self.title else ""
        return (
            f'{heading}{bundle}<div id="{element_id}" style="margin: 15px 0;"></div>\n'
            f"<script>CircuitsVis.render({element_id!r}, CircuitsVis.{self.component}, "
            f"{self.props_json()});</script>\n"
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
