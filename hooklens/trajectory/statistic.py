"""A statistic over layers × positions, and how to draw it (plotly heatmap, widget).

The result object of every `PredictionTrajectory` statistic; it hands arrays and
strings to the `hooklens.plotting` kit, which knows nothing of it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Shaped
from numpy.typing import NDArray

from hooklens._checks import positive_int
from hooklens.errors import InputError

# Cell text is an array of strings of either dtype: numpy `str_` (from `np.char`) or
# `object` (token formatting builds those, so that no token is cut to a fixed width).
# `Shaped` checks the shape and leaves the dtype alone: `NDArray[np.str_]` would refuse
# both at run time (a `<U5` array is no `np.dtype(np.str_)`, which is `<U0`).


def _stride_keep_last(x: NDArray, stride: int, axis: int = 0) -> NDArray:
    if not isinstance(stride, int) or stride < 1:
        raise InputError(f"stride must be a positive int, got {stride!r}")
    x = np.moveaxis(np.asarray(x), axis, 0)
    kept = np.concatenate([x[:-1:stride], x[-1:]])
    return np.moveaxis(kept, 0, axis)


@dataclass
class TrajectoryLabels:
    """Text for each (layer, position) cell of a trajectory heatmap.

    `label_strings` is `[layer, pos]` (shown in the cell); `hover_over_entries` is
    `[layer, pos, rows, cols]`, a small table shown on hover (for example the top-k
    tokens and their probabilities, one per row).
    """

    label_strings: Shaped[np.ndarray, "layer pos"]
    hover_over_entries: Shaped[np.ndarray, "layer pos rows cols"] | None = None

    def stride(self, stride: int) -> TrajectoryLabels:
        """Keep every `stride`-th layer, and always the last (the output)."""
        return replace(
            self,
            label_strings=_stride_keep_last(self.label_strings, stride),
            hover_over_entries=None
            if self.hover_over_entries is None
            else _stride_keep_last(self.hover_over_entries, stride),
        )

    def template_and_customdata(
        self, col_width_limit: int = 10
    ) -> tuple[str, Shaped[np.ndarray, "layer pos entries"]]:
        """The hover table as plotly wants it, as in tuned-lens: a `hovertemplate` and
        the `customdata` it reads, for a `go.Heatmap` of your own.

        Each column of the table is as wide as its longest entry plus one, at most
        `col_width_limit` characters; entries are right-aligned in it, and a longer one
        keeps its last characters. (`heatmap()` shows the table through `hover_text`
        instead, whole, under a line with the cell's value.)

        Returns:
            `(template, customdata)`: `template` puts `%{customdata[i]}` for the cells
            of each row side by side, a `<br>` after each row; `customdata` is
            `[layer, pos, rows × cols]`, the table's entries row by row.

        Raises:
            InputError: there is no hover table (`hover_over_entries` is None).

        Examples:
            >>> labels = TrajectoryLabels(
            ...     label_strings=np.array([["a"]]),
            ...     hover_over_entries=np.array([[[["cat", "12.5%"], ["dog", "3.0%"]]]]))
            >>> template, customdata = labels.template_and_customdata()
            >>> template
            '%{customdata[0]}%{customdata[1]}<br>%{customdata[2]}%{customdata[3]}<br><extra></extra>'
            >>> customdata.tolist()
            [[[' cat', ' 12.5%', ' dog', '  3.0%']]]
        """
        limit = positive_int(col_width_limit, "col_width_limit")
        if self.hover_over_entries is None:
            raise InputError(
                "these labels have no hover table (hover_over_entries is None), so there "
                "is no template to make: build them with hover entries, e.g. a "
                "trajectory's largest_prob_labels() with a tokenizer"
            )
        entries = np.asarray(self.hover_over_entries).astype(str)
        n_rows, n_cols = entries.shape[-2:]
        longest = np.char.str_len(entries).max(axis=(0, 1, 2), initial=0)  # [cols]
        widths = np.minimum(longest + 1, limit).tolist()
        cells = np.empty(entries.shape, dtype=object)
        for col, width in enumerate(widths):
            column = entries[..., col]
            cells[..., col] = np.array(
                [text[-width:].rjust(width) for text in column.reshape(-1).tolist()], dtype=object
            ).reshape(column.shape)
        template = "".join(
            "".join(f"%{{customdata[{r * n_cols + c}]}}" for c in range(n_cols)) + "<br>"
            for r in range(n_rows)
        )
        customdata = cells.astype(str).reshape(*entries.shape[:2], n_rows * n_cols)
        return template + "<extra></extra>", customdata

    def hover_text(self) -> np.ndarray:
        """`[layer, pos]` HTML snippets: the hover table, one row per line."""
        if self.hover_over_entries is None:
            return np.full(self.label_strings.shape, "", dtype=object)
        entries = np.asarray(self.hover_over_entries).astype(str)
        width = int(np.char.str_len(entries[..., 0]).max(initial=0))
        rows = np.char.ljust(entries[..., 0], width)  # [layer, pos, rows]
        for column in range(1, entries.shape[-1]):
            rows = np.char.add(np.char.add(rows, " "), entries[..., column])
        text = rows[..., 0]
        for row in range(1, rows.shape[-1]):
            text = np.char.add(np.char.add(text, "<br>"), rows[..., row])
        return text.astype(object)


@dataclass
class TrajectoryStatistic:
    """A statistic of a prediction trajectory: `stats` is `[..., layer, pos]`.

    Leading axes are batch axes; `figure()`, `heatmap()` and `widget()` average over
    them (ignoring NaN, which marks positions without a target, and padding).
    `padding` (`[..., pos]`, True at padded positions) lets the hover say how many
    sequences each mean covers.

    Examples:
        >>> import numpy as np
        >>> stat = TrajectoryStatistic("Entropy", np.random.rand(4, 3), units="nats")
        >>> stat.layer_labels.tolist()
        ['0', '1', '2', 'output']
        >>> fig = stat.clip(0.1, 0.9).stride(2).figure(title="demo")
    """

    name: str
    stats: NDArray[np.floating]
    sequence_labels: Shaped[np.ndarray, " pos"] | None = None
    trajectory_labels: TrajectoryLabels | None = None
    units: str | None = None
    max: float | None = None
    min: float | None = None
    includes_output: bool = True
    layer_labels: Any = None  # [layer] strings; default 0..n-2 then 'output'
    sequence_tokens: Any = None  # [pos] untruncated input tokens, for widgets
    padding: Any = None  # [..., pos] True where the input is padding (NaN in stats)

    def __post_init__(self) -> None:
        self.stats = np.asarray(self.stats)
        if self.stats.ndim < 2:
            raise InputError(f"stats must be [..., layer, pos], got shape {self.stats.shape}")
        n_layers, n_pos = self.stats.shape[-2:]
        if self.trajectory_labels is not None and (
            self.trajectory_labels.label_strings.shape != (n_layers, n_pos)
        ):
            raise InputError(
                f"labels are {self.trajectory_labels.label_strings.shape}, "
                f"stats are [layer, pos] = {(n_layers, n_pos)}"
            )
        if self.padding is not None:
            self.padding = np.asarray(self.padding, dtype=bool)
            expected = (*self.stats.shape[:-2], n_pos)
            if self.padding.shape != expected:
                raise InputError(f"padding is {self.padding.shape}, stats need {expected}")
        if self.sequence_labels is not None and len(self.sequence_labels) != n_pos:
            raise InputError(f"{len(self.sequence_labels)} sequence labels for {n_pos} positions")
        if self.layer_labels is None:
            names = [str(i) for i in range(n_layers - self.includes_output)]
            self.layer_labels = np.array(names + ["output"] * self.includes_output)

    def __repr__(self) -> str:
        units = f" {self.units}" if self.units else ""
        return (
            f"TrajectoryStatistic({self.name!r}, shape={self.stats.shape}{units}, "
            f"mean={np.nanmean(self.stats):.4g})"
        )

    @property
    def matrix(self) -> NDArray[np.floating]:
        """`[layer, pos]`: the statistic averaged over batch axes."""
        flat = self.stats.reshape(-1, *self.stats.shape[-2:])
        if len(flat) == 1:
            return flat[0]
        with warnings.catch_warnings():  # all-NaN columns (no target anywhere) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(flat, axis=0)

    def clip(self, min: float, max: float) -> TrajectoryStatistic:
        """Clip values to `[min, max]` (and fix the colour scale there)."""
        if not min < max:
            raise InputError(f"min must be less than max, got {min} >= {max}")
        return replace(self, stats=np.clip(self.stats, min, max), min=min, max=max)

    def stride(self, stride: int) -> TrajectoryStatistic:
        """Keep every `stride`-th layer, and always the last row."""
        return replace(
            self,
            stats=_stride_keep_last(self.stats, stride, axis=-2),
            trajectory_labels=None
            if self.trajectory_labels is None
            else self.trajectory_labels.stride(stride),
            layer_labels=_stride_keep_last(self.layer_labels, stride),
        )

    def _x_labels(self) -> list[str]:
        n_pos = self.stats.shape[-1]
        labels = self.sequence_labels if self.sequence_labels is not None else range(n_pos)
        # Zero-width non-joiners keep plotly from merging equal category labels.
        return [f"{label}" + "\u200c" * i for i, label in enumerate(labels)]

    def heatmap(
        self, colorscale: str = "rdbu_r", log_scale: bool = False, **kwargs: Any
    ) -> go.Heatmap:
        """A plotly heatmap: x = input tokens, y = layers, colour = the statistic.

        The hover's header (layer, value) is a `hovertemplate`; `customdata` holds only
        what differs per cell: the hover table of `trajectory_labels` and padding notes.
        """
        # float32 stats stay float32 (half the bytes in a page); float64 stays float64
        z = self.matrix.astype(np.result_type(self.matrix.dtype, np.float32))
        zmax = self.max if self.max is not None else float(np.nanmax(z))
        zmin = self.min if self.min is not None else float(np.nanmin(z))
        title = f"{self.name} ({self.units})" if self.units else self.name
        colorbar: dict[str, Any] = {"title": {"text": title, "side": "right"}}
        if log_scale:
            if zmin <= 0:
                raise InputError("log_scale needs positive values; clip() them first")
            z, zmin, zmax = np.log10(z), np.log10(zmin), np.log10(zmax)
            ticks = np.arange(np.ceil(zmin), np.floor(zmax) + 1)
            colorbar.update(tickmode="array", tickvals=ticks, ticktext=[f"1e{t:g}" for t in ticks])
        units = f" {self.units}" if self.units else ""
        # d3-format: 4 significant digits, trailing zeros trimmed (Python's ".4g")
        header = f"layer %{{y}}<br>{self.name}: %{{z:.4~g}}{units}"
        settings: dict[str, Any] = dict(
            x=self._x_labels(),
            y=[str(label) for label in self.layer_labels],
            z=z,
            zmin=zmin,
            zmax=zmax,
            colorscale=colorscale,
            colorbar=colorbar,
            hovertemplate=f"{header}<extra></extra>",
        )
        notes = self._padding_notes()
        hover = None
        if self.trajectory_labels is not None:
            settings.update(
                text=self.trajectory_labels.label_strings, texttemplate="<b>%{text}</b>"
            )
            if self.trajectory_labels.hover_over_entries is not None:
                hover = self.trajectory_labels.hover_text()
                settings["hoverlabel"] = dict(font_family="monospace")
        if hover is not None or any(notes):
            cells = np.empty(z.shape, dtype=object)
            for (layer, pos), _ in np.ndenumerate(cells):
                table = "" if hover is None else f"<br><br>{hover[layer, pos]}"
                cells[layer, pos] = f"{notes[pos]}{table}"
            settings["customdata"] = cells
            settings["hovertemplate"] = f"{header}%{{customdata}}<extra></extra>"
        settings.update(kwargs)
        return go.Heatmap(**settings)

    def _padding_notes(self) -> list[str]:
        """Per position: what the hover adds about padding (empty without any)."""
        n_pos = self.stats.shape[-1]
        if self.padding is None or not self.padding.any():
            return [""] * n_pos
        padded = self.padding.reshape(-1, n_pos)
        n_seq = padded.shape[0]
        notes = []
        for count in padded.sum(axis=0).tolist():
            if count == n_seq:
                notes.append("<br>padding: no token here")
            elif count:
                notes.append(f"<br>mean of {n_seq - count} of {n_seq} sequences ({count} padded)")
            else:
                notes.append("")
        return notes

    def figure(
        self, title: str = "", colorscale: str = "rdbu_r", token_width: int = 80
    ) -> go.Figure:
        """The heatmap as a figure, `token_width` pixels per input token."""
        n_layers, n_pos = self.stats.shape[-2:]
        return go.Figure(self.heatmap(colorscale)).update_layout(
            title_text=title or self.name,
            title_x=0.5,
            width=200 + token_width * n_pos,
            height=160 + 22 * n_layers,
            xaxis_title="Input",
            yaxis_title="Layer",
        )

    def widget(self):
        """A circuitsvis view: the input tokens coloured by this statistic, per layer.

        Pick a layer with the buttons; hover a token for its value at every layer.
        Renders offline (the circuitsvis bundle is inlined).
        """
        from hooklens.plotting.widgets import colored_tokens_by_layer

        n_pos = self.stats.shape[-1]
        for labels in (self.sequence_tokens, self.sequence_labels, range(n_pos)):
            if labels is not None:
                tokens = [str(t) for t in labels]
                break
        return colored_tokens_by_layer(
            tokens,
            self.matrix,
            [str(label) for label in self.layer_labels],
            title=f"{self.name} ({self.units})" if self.units else self.name,
        )
