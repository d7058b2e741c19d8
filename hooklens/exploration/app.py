"""`hooklens serve`: the explorer as a local web app (Dash; `pip install "hooklens[app]"`).

Dash because its figures are plotly's, the same objects every hooklens statistic draws,
and because it serves plotly.js and its own scripts from the installed package: the page
works with no network. Flask, under it, answers each request on its own thread, so a
slow lens pass never holds up the next page load; the passes themselves take turns (a
lock around the session), since two of them on the same cores only slow each other.
A bad prompt comes back as a message in the page, never as a server traceback.
"""

from __future__ import annotations

import threading
from typing import Any

from hooklens.errors import HooklensError, InputError
from hooklens.exploration.notebook import DEFAULT_TEXT
from hooklens.exploration.session import PAIRED, SINGLE, ExploreSession, View, pin

INSTALL = 'pip install "hooklens[app]"'
HOST = "127.0.0.1"
PORT = 7860


def require_dash() -> Any:
    """The `dash` module, or an `InputError` saying how to install the extra."""
    try:
        import dash
    except ImportError as error:
        raise InputError(f"hooklens serve needs Dash, an optional extra: {INSTALL}") from error
    return dash


def _number(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def build_app(session: ExploreSession, text: str = DEFAULT_TEXT) -> Any:
    """A Dash app exploring `session`'s model: text, lens, statistic, window, pins.

    Examples:
        >>> from hooklens.exploration import ExploreSession
        >>> from hooklens.exploration.app import build_app
        >>> app = build_app(ExploreSession(model, {"tuned": lens}))  # doctest: +SKIP
        >>> app.run(host="127.0.0.1", port=7860)                     # doctest: +SKIP
    """
    dash = require_dash()
    from dash import Input, Output, State, dcc, html

    names = session.lens_names
    statistics = [*SINGLE, *PAIRED] if len(names) > 1 else list(SINGLE)
    lock = threading.Lock()
    app = dash.Dash(__name__, title="hooklens", serve_locally=True)

    def labelled(label: str, control: Any, width: str = "14em") -> Any:
        return html.Label(
            [html.Span(label, style={"display": "block"}), control],
            style={"display": "inline-block", "width": width, "marginRight": "1em"},
        )

    app.layout = html.Div(
        [
            html.H2("hooklens: a prediction, layer by layer"),
            dcc.Textarea(id="text", value=text, style={"width": "100%", "height": "4em"}),
            html.Button("Read", id="read"),
            html.Div(
                [
                    labelled("lens", dcc.Dropdown(names, names[-1], id="lens", clearable=False)),
                    labelled(
                        "statistic",
                        dcc.Dropdown(statistics, "entropy", id="statistic", clearable=False),
                    ),
                    labelled(
                        "against (two-lens statistics)",
                        dcc.Dropdown(names, names[0], id="other", clearable=False),
                    ),
                    labelled("from position", dcc.Input(id="start", type="number", min=0), "8em"),
                    labelled("to position", dcc.Input(id="stop", type="number", min=1), "8em"),
                    labelled("token view at", dcc.Input(id="position", type="number"), "8em"),
                    labelled(
                        "pin (words, comma-separated)",
                        dcc.Input(id="pinned", type="text", debounce=True),
                        "16em",
                    ),
                ],
                style={"margin": "0.5em 0"},
            ),
            html.Div(id="message", role="alert", style={"color": "#b00", "minHeight": "1.2em"}),
            dcc.Loading(
                html.Div(
                    [
                        dcc.Graph(id="heatmap", style={"flex": "3", "minWidth": 0}),
                        dcc.Graph(id="tokens", style={"flex": "2", "minWidth": 0}),
                    ],
                    style={"display": "flex", "gap": "1em"},
                )
            ),
            html.Div(id="status", style={"color": "#555", "fontSize": "0.9em"}),
        ],
        style={"fontFamily": "sans-serif", "margin": "1em"},
    )

    @app.callback(
        Output("heatmap", "figure"),
        Output("tokens", "figure"),
        Output("message", "children"),
        Output("status", "children"),
        Input("read", "n_clicks"),
        Input("text", "n_blur"),
        Input("lens", "value"),
        Input("statistic", "value"),
        Input("other", "value"),
        Input("start", "value"),
        Input("stop", "value"),
        Input("position", "value"),
        Input("pinned", "value"),
        State("text", "value"),
    )
    def redraw(_read, _blur, lens, statistic, other, start, stop, position, pinned, text):
        words = [word.strip() for word in (pinned or "").split(",") if word.strip()]
        try:
            with lock:
                view = View(
                    statistic=statistic,
                    other=other if statistic in PAIRED else None,
                    window=(_number(start), _number(stop)),
                    position=-1 if position in (None, "") else int(position),
                    pinned=pin(session, words) if words else (),
                )
                # the page sizes the figures: they fill their half of the row
                heatmap = session.figure(text, lens, view).update_layout(width=None, autosize=True)
                tokens = session.token_view(text, lens, view)
                status = f"{session.describe(lens)} · {session.passes} lens passes so far"
        except HooklensError as error:
            return dash.no_update, dash.no_update, str(error), dash.no_update
        return heatmap, tokens, "", status

    return app


def serve(session: ExploreSession, text: str = DEFAULT_TEXT, *, host: str = HOST, port: int = PORT):
    """Run the app until interrupted (Ctrl-C), on `host:port` (this machine only by default)."""
    # threaded: each request on its own thread, so a page loads while a lens pass runs
    build_app(session, text).run(host=host, port=port, debug=False, threaded=True)
