"""`explore`: the notebook explorer — a text box, a lens, a statistic, a window, pins.

Built on ipywidgets' own controls and `Output` areas showing plotly figures, which every
notebook front-end renders (Jupyter, JupyterLab, VS Code, and Colab, whose widget
support covers the built-in ipywidgets without a custom widget manager). plotly's
`FigureWidget` would need anywidget's front-end, which Colab loads only after
`enable_custom_widget_manager()`. Every control change redraws the figures from an
`ExploreSession`, so only a new text or a new lens costs a model run or a lens pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hooklens.errors import HooklensError, MissingWidgetsWarning, warn
from hooklens.exploration.session import PAIRED, SINGLE, ExploreSession, View, pin
from hooklens.lenses import Lens

INSTALL = 'pip install "hooklens[notebook]"  (ipywidgets, for the interactive explorer)'
DEFAULT_TEXT = "The Eiffel Tower is in the city of Paris, the capital of France. It was built in"


class Explorer:
    """The explorer's controls and figures around an `ExploreSession`.

    Set a control's `.value` (in code or in the page) and the figures follow. `box` is the
    widget to display; a notebook displays the `Explorer` itself.
    """

    def __init__(self, session: ExploreSession, text: str, lens: str | None = None):
        import ipywidgets as w

        self.session = session
        names = session.lens_names
        statistics = [*SINGLE, *PAIRED] if len(names) > 1 else list(SINGLE)
        self.text = w.Textarea(value=text, description="text", continuous_update=False)
        self.lens = w.Dropdown(options=names, value=lens or names[-1], description="lens")
        self.statistic = w.Dropdown(options=statistics, value="entropy", description="statistic")
        self.other = w.Dropdown(options=names, value=names[0], description="against")
        self.window = w.IntRangeSlider(description="positions", continuous_update=False)
        self.position = w.IntSlider(description="token view", continuous_update=False)
        self.pinned = w.Text(
            description="pin", placeholder="words, comma-separated", continuous_update=False
        )
        self.status = w.HTML()
        self.heatmap = w.Output()
        self.tokens = w.Output()
        controls = [self.lens, self.statistic, self.other, self.window, self.position]
        self.box = w.VBox(
            [
                self.text,
                w.HBox(controls[:3]),
                w.HBox([*controls[3:], self.pinned]),
                w.HBox([self.heatmap, self.tokens]),
                self.status,
            ]
        )
        self.figure: Any = None
        self.token_figure: Any = None
        self._read_text()
        self.text.observe(lambda _: self._read_text(), names="value")
        for control in [self.lens, self.statistic, self.other, self.window, self.position]:
            control.observe(lambda _: self.redraw(), names="value")
        self.pinned.observe(lambda _: self.redraw(), names="value")

    def view(self) -> View:
        """The `View` the controls describe."""
        words = [word.strip() for word in self.pinned.value.split(",") if word.strip()]
        start, stop = self.window.value
        return View(
            statistic=self.statistic.value,
            other=self.other.value if self.statistic.value in PAIRED else None,
            window=(start, stop + 1),
            position=self.position.value,
            pinned=pin(self.session, words) if words else (),
        )

    def _read_text(self) -> None:
        """A new text: size the position controls to it, then draw."""
        try:
            n = int(self.session.tokens(self.text.value).shape[-1])
        except HooklensError as error:
            self._say(error)
            return
        # both bounds at once, so the slider never holds a value outside them
        with self.window.hold_trait_notifications(), self.position.hold_trait_notifications():
            self.window.max, self.window.value = n - 1, (0, n - 1)
            self.position.max, self.position.value = n - 1, n - 1
        self.redraw()

    def redraw(self) -> None:
        """Draw both figures for the controls' values; a bad input is a message instead."""
        self.other.disabled = self.statistic.value not in PAIRED
        try:
            view = self.view()
            text, lens = self.text.value, self.lens.value
            self.figure = self.session.figure(text, lens, view)
            self.token_figure = self.session.token_view(text, lens, view)
        except HooklensError as error:
            self._say(error)
            return
        self._show(self.heatmap, self.figure)
        self._show(self.tokens, self.token_figure)
        self.status.value = f"{self.session.describe(lens)} · {self.session.passes} lens passes"

    def _say(self, error: Exception) -> None:
        self.status.value = f"<span style='color:#b00'>{error}</span>"

    @staticmethod
    def _show(area: Any, figure: Any) -> None:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is None:  # a script or a test: no page to draw on
            return
        with area:
            area.clear_output(wait=True)
            display(figure)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)


def explore(
    model: Any,
    lenses: Mapping[str, Lens] | None = None,
    text: str = DEFAULT_TEXT,
    *,
    lens: str | None = None,
) -> Explorer | Any:
    """Explore `model`'s predictions layer by layer in a notebook.

    A text box, a lens (the logit lens plus `lenses`), a statistic (every trajectory
    statistic, and with two lenses the KL, JS and TV between them), a position window,
    and a token view: the probability of pinned tokens (by default every token that is
    top-1 at some layer) across layers at one position. Changing the statistic, the
    window, the position or the pins redraws from cache; a new text runs the model once,
    and each lens reads it once.

    Args:
        model: a HookedTransformer or TransformerBridge with a tokenizer.
        lenses: named lenses beside the logit lens, e.g. `{"tuned": tuned_lens}`.
        text: the first prompt shown.
        lens: the lens shown first (default: the last of `lenses`, else the logit lens).

    Returns:
        An `Explorer` (display it; its controls' `.value` can be set from code too), or,
        without ipywidgets, the first view's static plotly figure and a warning that
        says what to install.

    Examples:
        >>> from hooklens import explore
        >>> explorer = explore(model, {"tuned": lens}, text="one two three four")
        >>> explorer.statistic.value = "forward_kl"  # redraws; no new lens pass
        >>> explorer.session.passes
        1
    """
    session = ExploreSession(model, lenses or {})
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        warn(f"the interactive explorer needs ipywidgets: {INSTALL}", MissingWidgetsWarning)
        return session.figure(text, lens or session.lens_names[-1], View())
    return Explorer(session, text, lens)
