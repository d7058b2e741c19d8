"""What an exploration remembers: one model run per text, one lens pass per (text, lens).

`ExploreSession` is the state behind `hooklens.exploration` (the notebook widget) and
`hooklens serve` (the web app), kept free of any widget library so both front-ends and
the tests drive the same object. A *view* — which statistic, which positions, which
tokens are pinned — is read off the cached trajectories and never reruns the model or
the lens: `passes` counts the lens passes, so a test (or a curious user) can check it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Int
from torch import Tensor

from hooklens.errors import InputError, InputTypeError
from hooklens.lenses import Lens, LogitLens
from hooklens.trajectory import PredictionTrajectory, TrajectoryStatistic, next_token_targets

SINGLE = (
    "entropy",
    "forward_kl",
    "cross_entropy",
    "target_probability",
    "rank",
    "max_probability",
)
"""Statistics of one lens's trajectory, by method name."""

PAIRED = ("kl_divergence", "js_divergence", "total_variation")
"""Statistics between two lenses' trajectories of one text, by method name."""

PINNED_MAX = 12
"""At most this many pinned tokens are drawn (the default picks every layer's top-1)."""


@dataclass(frozen=True)
class View:
    """What the user looks at: everything here changes no model or lens pass.

    Attributes:
        statistic: a name of `SINGLE`, or of `PAIRED` with `other` set.
        other: for a paired statistic, the second lens's name.
        window: the positions shown, `(start, stop)` as in a slice (None: all).
        position: the position of the token view (negative counts from the end).
        pinned: token ids followed across layers in the token view; empty: every token
            that is top-1 at some layer at `position`.
    """

    statistic: str = "entropy"
    other: str | None = None
    window: tuple[int | None, int | None] = (None, None)
    position: int = -1
    pinned: tuple[int, ...] = ()


@dataclass
class ExploreSession:
    """Trajectories of texts under named lenses, built once and then only looked at.

    Args:
        model: a HookedTransformer or TransformerBridge with a tokenizer.
        lenses: named lenses beside the logit lens (which is always there as "logit").
        max_tokens: the longest prompt accepted (default: the model's context).

    Examples:
        >>> from hooklens.exploration import ExploreSession, View
        >>> session = ExploreSession(model, {"tuned": lens})
        >>> heatmap = session.figure("one two three four", "tuned", View("forward_kl"))
        >>> lines = session.token_view("one two three four", "tuned", View(position=-1))
        >>> session.passes  # both figures read one lens pass
        1
    """

    model: Any
    lenses: Mapping[str, Lens] = field(default_factory=dict)
    max_tokens: int | None = None
    passes: int = 0
    _runs: dict[str, tuple[Tensor, Tensor, Any]] = field(default_factory=dict, repr=False)
    _trajectories: dict[tuple[str, str], PredictionTrajectory] = field(
        default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        if getattr(self.model, "tokenizer", None) is None:
            raise InputError(
                "explore needs a model with a tokenizer to read text; load it by name "
                "(hooklens.models.load) or set model.tokenizer"
            )
        lenses: dict[str, Lens] = {"logit": LogitLens.from_model(self.model)}
        for name, lens in dict(self.lenses).items():
            if not isinstance(lens, Lens):
                raise InputTypeError(
                    f"lenses maps names to hooklens lenses; {name!r} is a {type(lens).__name__}"
                )
            lenses[name] = lens
        self.lenses = lenses
        if self.max_tokens is None:
            self.max_tokens = int(self.model.cfg.n_ctx)

    @property
    def lens_names(self) -> list[str]:
        return list(self.lenses)

    def describe(self, lens: str) -> str:
        """Which model, lens and precision a page shows, in one line."""
        cfg = self.model.cfg
        dtype = str(getattr(cfg, "dtype", next(self.model.parameters()).dtype))
        return (
            f"model {cfg.model_name} ({cfg.n_layers} layers), lens {lens} "
            f"({type(self.lenses[lens]).__name__}), {dtype.removeprefix('torch.')}"
        )

    # --- what costs a pass --------------------------------------------------------------

    def tokens(self, text: str) -> Int[Tensor, "1 pos"]:
        """The prompt's token ids, refused with a message a page can show when unusable."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("type a prompt: the text is empty")
        try:
            tokens = self.model.to_tokens(text, truncate=False)  # too long is refused below
        except Exception as error:  # the tokenizer's own error, whatever its class
            raise InputError(f"the tokenizer cannot read this text: {error}") from error
        if tokens.shape[-1] > self.max_tokens:  # type: ignore[operator]
            raise InputError(
                f"the prompt is {tokens.shape[-1]} tokens, more than the {self.max_tokens} "
                "this model reads; shorten it"
            )
        return tokens

    def trajectory(self, text: str, lens: str) -> PredictionTrajectory:
        """The trajectory of `text` under the lens named `lens` (built once, then cached)."""
        if lens not in self.lenses:
            raise InputError(f"no lens named {lens!r}; the lenses are {self.lens_names}")
        key = (text, lens)
        if key not in self._trajectories:
            if text not in self._runs:
                tokens = self.tokens(text)
                with torch.no_grad():
                    logits, cache = self.model.run_with_cache(tokens)
                self._runs[text] = (tokens, logits, cache)
            tokens, logits, cache = self._runs[text]
            self._trajectories[key] = PredictionTrajectory.from_lens_and_cache(
                self.lenses[lens], tokens, cache, logits, targets=next_token_targets(tokens)
            )
            self.passes += 1
        return self._trajectories[key]

    # --- views: read off the cache ------------------------------------------------------

    def statistic(self, text: str, lens: str, view: View) -> TrajectoryStatistic:
        """The view's statistic of `text` under `lens`, cut to the view's window."""
        traj = self.trajectory(text, lens)
        if view.statistic in SINGLE:
            stat = getattr(traj, view.statistic)()
        elif view.statistic in PAIRED:
            if view.other is None:
                raise InputError(f"{view.statistic} compares two lenses: choose the second one")
            stat = getattr(traj, view.statistic)(self.trajectory(text, view.other))
        else:
            raise InputError(
                f"unknown statistic {view.statistic!r}; choose one of {[*SINGLE, *PAIRED]}"
            )
        start, stop = view.window
        if (start, stop) != (None, None):
            stat = _window(stat, slice(start, stop))
        return stat

    def figure(self, text: str, lens: str, view: View) -> go.Figure:
        """The view's heatmap, titled with the statistic and the lens (or lenses)."""
        stat = self.statistic(text, lens, view)
        lenses = lens if view.statistic in SINGLE else f"{lens} vs {view.other}"
        return stat.figure(title=f"{stat.name}: {lenses}")

    def pinned_tokens(self, text: str, lens: str, view: View) -> list[int]:
        """The view's pinned ids, or every token that is top-1 at some layer there."""
        if view.pinned:
            return list(view.pinned)
        traj = self.trajectory(text, lens)
        ids, _ = traj.top_predictions()
        top1 = ids[0, :, self._position(traj, view.position), 0].tolist()
        return list(dict.fromkeys(top1))[:PINNED_MAX]

    def token_probabilities(self, text: str, lens: str, view: View) -> dict[int, list[float]]:
        """`{token id: [probability at each row]}` at the view's position."""
        traj = self.trajectory(text, lens)
        position = self._position(traj, view.position)
        pinned = self.pinned_tokens(text, lens, view)
        one = traj.slice_sequence(slice(position, position + 1))
        ids = torch.tensor(pinned)
        rows = [one.layer_log_probs(row)[0, 0, ids].exp() for row in range(traj.num_layers + 1)]
        table = torch.stack(rows, dim=1)  # [pinned, row]
        return {token: table[i].tolist() for i, token in enumerate(pinned)}

    def token_view(self, text: str, lens: str, view: View) -> go.Figure:
        """Lines: each pinned token's probability across the rows at the view's position."""
        traj = self.trajectory(text, lens)
        position = self._position(traj, view.position)
        rows = [str(row) for row in range(traj.num_layers)] + ["output"]
        figure = go.Figure()
        for token, probabilities in self.token_probabilities(text, lens, view).items():
            figure.add_scatter(
                x=rows, y=probabilities, mode="lines+markers", name=repr(self._decode(token))
            )
        shown = repr(self._decode(int(traj.input_ids[0, position])))
        return figure.update_layout(
            title_text=f"p(next token) after position {position} ({shown}): {lens}",
            xaxis_title="layer",
            yaxis_title="probability",
            yaxis_range=[0, 1],
        )

    def _position(self, traj: PredictionTrajectory, position: int) -> int:
        n = traj.num_tokens
        if not -n <= position < n:
            raise InputError(f"position {position} is outside the prompt's {n} tokens")
        return position % n

    def _decode(self, token: int) -> str:
        return self.model.tokenizer.decode([token])


def _window(stat: TrajectoryStatistic, positions: slice) -> TrajectoryStatistic:
    """The statistic at `positions` only: values, cell labels, tokens and padding."""
    if not stat.stats[..., positions].size:
        n_pos = stat.stats.shape[-1]
        raise InputError(f"the window {positions} holds none of the {n_pos} positions")
    labels = stat.trajectory_labels
    if labels is not None:
        hover = labels.hover_over_entries
        labels = replace(
            labels,
            label_strings=labels.label_strings[:, positions],
            hover_over_entries=None if hover is None else hover[:, positions],
        )

    def cut(values: Any) -> Any:
        return None if values is None else np.asarray(values)[..., positions]

    return replace(
        stat,
        stats=stat.stats[..., positions],
        trajectory_labels=labels,
        sequence_labels=cut(stat.sequence_labels),
        sequence_tokens=cut(stat.sequence_tokens),
        padding=cut(stat.padding),
    )


def pin(session: ExploreSession, words: Sequence[str]) -> tuple[int, ...]:
    """Token ids to pin for `words`: each word's first token as it starts a text and as
    it follows a space (" Paris" is another token than "Paris" in most BPE vocabularies),
    without repeats."""
    ids: list[int] = []
    for word in words:
        word = word.strip()
        forms = [
            session.model.tokenizer.encode(f, add_special_tokens=False) for f in (word, f" {word}")
        ]
        if not word or not any(forms):
            raise InputError(f"{word!r} has no token in this tokenizer")
        ids.extend(int(encoded[0]) for encoded in forms if encoded)
    return tuple(dict.fromkeys(ids))
