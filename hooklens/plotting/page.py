"""One self-contained HTML page of plotly figures and circuitsvis widgets that fits the
window it is opened in.

- **Each library once, compressed.** plotly.js (4.8 MB) and the circuitsvis bundle
  (1.3 MB) are inlined once each, gzip-compressed and base64-encoded (about 1.9 MB and
  0.5 MB); the browser unpacks them with `DecompressionStream` (Chromium 80, Firefox 113,
  Safari 16.4 and later) and every figure and widget draws once they are loaded. The
  page fetches nothing.
- **No repeated data.** A trace attribute or figure template that several figures share
  (the hover tables and token labels of one lens's heatmaps, the x labels, plotly's
  default template) is written once and referred to by number.
- **Figures fit the window.** Every figure takes the width of the page (`autosize`, and
  plotly's `responsive` config follows the window). A heatmap with more input tokens
  than fit at `cell_width` pixels each shows the first ones that fit, with a range
  slider under it to scroll along the input (or drag the plot sideways): the title, the
  layer axis and the colour bar stay in view.

The kit knows nothing of hooklens's result types: it takes plotly figures and `Widget`s.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import uuid
from functools import lru_cache
from typing import Any

import plotly.graph_objects as go

from hooklens.plotting.widgets import Widget, circuitsvis_bundle

PACKED_TYPE = "application/x-hooklens-gzip-base64"
# Shared values shorter than this are written in place (a reference saves nothing).
SHARE_FROM_CHARS = 512

# Defines `hooklens.ready` (a promise: the libraries are loaded), `hooklens.plot` and
# `hooklens.widget`. Runs right after the packed libraries in <head>.
RUNTIME = """
(function () {
  "use strict";
  var hooklens = window.hooklens = {data: {}};
  function unpack(element) {
    var text = atob(element.textContent.trim());
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text();
  }
  function run(code) {
    var script = document.createElement("script");
    script.textContent = code;
    document.head.appendChild(script);
  }
  function notice(message) {
    function show() {
      var p = document.createElement("p");
      p.className = "hooklens-error";
      p.textContent = message;
      document.body.insertBefore(p, document.body.firstChild);
    }
    if (document.body) show(); else document.addEventListener("DOMContentLoaded", show);
  }
  var packed = document.querySelectorAll('script[type="PACKED_TYPE"]');
  hooklens.ready = Promise.all(Array.prototype.map.call(packed, unpack)).then(function (codes) {
    codes.forEach(run);
  });
  hooklens.ready.catch(function (error) {
    console.error(error);
    notice("This report's figures need a browser with DecompressionStream (Chromium 80, "
      + "Firefox 113, Safari 16.4 or later): " + error);
  });
  function setPath(target, path, value) {
    for (var i = 0; i < path.length - 1; i++) target = target[path[i]];
    target[path[path.length - 1]] = value;
  }
  // Show as many input positions as fit at cellWidth pixels each; the rest scroll, with
  // a range slider (in extra height) under the x axis.
  function fit(gd, figure, cellWidth, baseHeight, start) {
    var layout = figure.layout;
    var n = figure.data[0].x.length;
    var margin = layout.margin || {};
    var room = gd.clientWidth - (margin.l || 80) - (margin.r || 80) - 90;
    var shown = Math.max(1, Math.min(n, Math.floor(room / cellWidth)));
    var scrolls = shown < n;
    var extra = scrolls ? 70 : 0;
    var plotHeight = baseHeight - (margin.t === undefined ? 100 : margin.t)
      - (margin.b === undefined ? 80 : margin.b);
    layout.height = baseHeight + extra;
    layout.xaxis = layout.xaxis || {};
    start = Math.max(-0.5, Math.min(start === undefined ? -0.5 : start, n - 0.5 - shown));
    layout.xaxis.range = [start, start + shown];
    layout.xaxis.rangeslider = {visible: scrolls, range: [-0.5, n - 0.5],
      thickness: Math.min(0.5, 40 / Math.max(plotHeight + extra, 1))};
    layout.yaxis = layout.yaxis || {};
    layout.yaxis.fixedrange = true;
    layout.dragmode = scrolls ? "pan" : "zoom";
    gd.style.height = layout.height + "px";
    return shown;
  }
  hooklens.plot = function (id, figure, shared, cellWidth) {
    hooklens.ready.then(function () {
      var gd = document.getElementById(id);
      shared.forEach(function (ref) { setPath(figure, ref[0], hooklens.data[ref[1]]); });
      var config = {responsive: true, displaylogo: false};
      if (!cellWidth) return Plotly.newPlot(gd, figure.data, figure.layout, config);
      var baseHeight = figure.layout.height || 450;
      var shown = fit(gd, figure, cellWidth, baseHeight);
      var wait = null;
      window.addEventListener("resize", function () {
        clearTimeout(wait);
        wait = setTimeout(function () {
          var layout = {margin: gd.layout.margin, xaxis: {}, yaxis: {}};
          var start = gd.layout.xaxis.range[0];  // keep the scrolled-to tokens in view
          var now = fit(gd, {data: gd.data, layout: layout}, cellWidth, baseHeight, start);
          if (now === shown) return;
          shown = now;
          Plotly.relayout(gd, {height: layout.height, "xaxis.range": layout.xaxis.range,
            "xaxis.rangeslider": layout.xaxis.rangeslider, dragmode: layout.dragmode});
        }, 150);
      });
      return Plotly.newPlot(gd, figure.data, figure.layout, config);
    }).catch(function (error) { console.error(error); });
  };
  hooklens.widget = function (id, component, props) {
    hooklens.ready.then(function () {
      CircuitsVis.render(id, CircuitsVis[component], props);
    }).catch(function (error) { console.error(error); });
  };
})();
""".replace("PACKED_TYPE", PACKED_TYPE)

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;padding:0 2em 2em;max-width:1800px;}
section{margin-bottom:3em;}
.hooklens-figure{width:100%;margin:1em 0;}
.hooklens-scroll{overflow-x:auto;}
.hooklens-error{color:#a00;font-weight:bold;}
nav.toc ol{columns:2 20em;}
.lens-comparison{border-collapse:collapse;font-variant-numeric:tabular-nums;}
.lens-comparison td,.lens-comparison th{padding:2px 8px;text-align:right;}
.lens-comparison thead th{border-bottom:1px solid #999;}
"""


@lru_cache(maxsize=4)
def packed_library(name: str, code: str) -> str:
    """`<script>` holding `code` gzip-compressed and base64-encoded, unpacked and run by
    the page's runtime (`RUNTIME`) in document order."""
    data = base64.b64encode(gzip.compress(code.encode("utf-8"), compresslevel=9, mtime=0))
    return f'<script type="{PACKED_TYPE}" data-library="{name}">{data.decode("ascii")}</script>'


def unpack_libraries(document: str) -> dict[str, list[str]]:
    """Every packed library in `document`, by name: what the browser will run."""
    found: dict[str, list[str]] = {}
    pattern = rf'<script type="{PACKED_TYPE}" data-library="([^"]+)">([^<]*)</script>'
    for name, data in re.findall(pattern, document):
        found.setdefault(name, []).append(gzip.decompress(base64.b64decode(data)).decode())
    return found


def figure_json(value: Any) -> str:
    """Compact JSON of (part of) a figure's `to_dict()`, safe inside `<script>`: UTF-8
    rather than `\\u` escapes, and no `</` or `<!--` that would end the script."""
    from plotly.utils import PlotlyJSONEncoder

    text = json.dumps(value, cls=PlotlyJSONEncoder, ensure_ascii=False, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("<!--", "\\u003c!--")


def slug(text: str, taken: set[str]) -> str:
    """An HTML id from `text`, unique among `taken` (which it joins)."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


class Page:
    """Figures and widgets for one HTML document, with shared data written once.

    Examples:
        >>> import plotly.graph_objects as go
        >>> page = Page()
        >>> a = page.figure(go.Figure(go.Heatmap(z=[[1, 2]], text=[["x" * 600] * 2])))
        >>> b = page.figure(go.Figure(go.Heatmap(z=[[3, 4]], text=[["x" * 600] * 2])))
        >>> b.count("x" * 600)  # the second figure refers to the first one's text
        0
        >>> document = page.document("demo", a + b)
    """

    def __init__(self, cell_width: int = 64):
        self.cell_width = cell_width
        self._shared: dict[str, int] = {}

    def _share(self, value: Any, path: list[Any], refs: list[Any], out: list[str]) -> bool:
        text = figure_json(value)
        if len(text) < SHARE_FROM_CHARS:
            return False
        index = self._shared.get(text)
        if index is None:
            index = self._shared[text] = len(self._shared)
            out.append(f"hooklens.data[{index}]={text};")
        refs.append([path, index])
        return True

    def figure(self, figure: go.Figure, scroll: bool | None = None) -> str:
        """The figure, `100%` wide; `scroll`: keep `cell_width` pixels per x category
        and scroll along x (default: for a figure whose first trace is a heatmap)."""
        spec = figure.to_dict()  # numeric arrays already base64 (plotly >= 6)
        layout = spec.setdefault("layout", {})
        height = layout.get("height") or 450
        layout.pop("width", None)
        layout["autosize"] = True
        refs: list[Any] = []
        out: list[str] = []
        if "template" in layout and self._share(layout["template"], [], refs, out):
            refs[-1][0] = ["layout", "template"]
            del layout["template"]
        for index, trace in enumerate(spec.get("data", [])):
            for key in list(trace):
                if self._share(trace[key], ["data", index, key], refs, out):
                    del trace[key]
        if scroll is None:
            scroll = bool(spec.get("data")) and spec["data"][0].get("type") == "heatmap"
        element_id = f"figure-{uuid.uuid4().hex[:12]}"
        body = figure_json(spec)
        width = self.cell_width if scroll else 0
        call = f"hooklens.plot({element_id!r},{body},{json.dumps(refs)},{width});"
        return (
            f'<div class="hooklens-figure"><div id="{element_id}" class="plotly-graph-div" '
            f'style="height:{height}px;width:100%"></div></div>\n'
            f"<script>{''.join(out)}{call}</script>\n"
        )

    def widget(self, widget: Widget) -> str:
        """The widget, drawn once the page's circuitsvis bundle is loaded."""
        element_id = f"hooklens-{uuid.uuid4().hex[:12]}"
        heading = f"<h3>{html.escape(widget.title)}</h3>\n" if widget.title else ""
        return (
            f'{heading}<div class="hooklens-scroll"><div id="{element_id}" '
            'style="margin: 15px 0;"></div></div>\n'
            f"<script>hooklens.widget({element_id!r},{widget.component!r},"
            f"{widget.props_json()});</script>\n"
        )

    def document(self, title: str, body: str, contents: list[tuple[str, str]] | None = None) -> str:
        """The whole HTML document: `body` under an `<h1>` and a table of `contents`
        (`(id, heading)` pairs, each a link to `#id`)."""
        from plotly.offline import get_plotlyjs

        toc = ""
        if contents:
            items = "".join(
                f'<li><a href="#{html.escape(anchor)}">{html.escape(text)}</a></li>'
                for anchor, text in contents
            )
            toc = f'<nav class="toc" aria-label="Contents"><h2>Contents</h2><ol>{items}</ol></nav>'
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                f"<title>{html.escape(title)}</title>",
                f"<style>{STYLE}</style>",
                packed_library("plotly.js", get_plotlyjs()),
                packed_library("circuitsvis", circuitsvis_bundle()),
                f"<script>{RUNTIME}</script>",
                "</head><body>",
                f"<h1>{html.escape(title)}</h1>",
                toc,
                body,
                "</body></html>",
            ]
        )
