"""The report fits the screen: measured in headless Chromium (Playwright) at 1,280 × 800
and 1,920 × 1,080 on a 64-token input, and carries each library once.

Every figure's title, plot area, layer axis and colour bar lie inside the window's width;
the page does not scroll sideways; a heatmap too long for the window scrolls inside
itself (its range slider reaches the last token); the table of contents links to every
section.
"""

from __future__ import annotations

import base64
import gzip
import os
import re

import pytest
import torch

from hooklens import TunedLens
from hooklens.report import trajectory_report
from tests.browser import chromium
from tests.conftest import make_bridge

# 64 tokens (a BOS and 63 one-token words; the tiny model's whole context): wider than
# either window at any readable cell width.
LONG_TEXT = " ".join(f"w{4 + (i * i) % 6}" for i in range(63))
WINDOWS = [(1280, 800), (1920, 1080)]
N_FIGURES = 11  # 4 statistics × 2 lenses, their JS divergence, 2 comparison figures
N_WIDGETS = 4

MEASURE = """() => {
  const box = (el) => {
    if (!el) return null;
    const r = el.getBoundingClientRect();
    return {left: r.left, right: r.right, width: r.width};
  };
  const figures = [...document.querySelectorAll(".js-plotly-plot")].map((gd) => ({
    title: box(gd.querySelector(".gtitle")),
    titleText: gd.querySelector(".gtitle") ? gd.querySelector(".gtitle").textContent : "",
    plot: box(gd.querySelector(".nsewdrag")),
    yaxis: box(gd.querySelector(".yaxislayer-above")),
    colorbar: box(gd.querySelector(".colorbar")),
    heatmap: !!gd.querySelector(".hm"),
  }));
  const links = [...document.querySelectorAll("nav a[href^='#']")].map((a) => ({
    href: a.getAttribute("href"),
    target: !!document.getElementById(a.getAttribute("href").slice(1)),
  }));
  return {
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    figures: figures,
    links: links,
    sections: document.querySelectorAll("section").length,
  };
}"""


def sync_playwright():
    """Playwright's sync API, or skip where it is missing (fail under CI, as for chromium)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "playwright is not installed (pip install -e '.[dev]' installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


@pytest.fixture(scope="module")
def long_report(word_tokenizer, tmp_path_factory):
    model = make_bridge(word_tokenizer, "llama")
    assert model.to_tokens(LONG_TEXT, truncate=False).shape[-1] == 64
    torch.manual_seed(0)
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for param in lens.parameters():
            param.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("layout") / "report.html"
    return trajectory_report(model, LONG_TEXT, {"tuned lens": lens}, path)


@pytest.fixture(scope="module")
def browser():
    executable = chromium()  # skips (or fails under CI) without chromium
    with sync_playwright()() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


def open_report(browser, path, width, height):
    """The report loaded and drawn at `width` × `height`; problems and requests logged."""
    page = browser.new_page(viewport={"width": width, "height": height})
    problems: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"error: {error}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.resolve().as_uri())
    page.wait_for_function(
        f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {N_FIGURES}",
        timeout=60_000,
    )
    page.wait_for_timeout(500)  # the widgets draw after the same promise
    return page, problems, requests


def outside(box, width, what) -> list[str]:
    """What is wrong with `box` (nothing if it lies inside the window's width)."""
    if box is None or box["width"] <= 0:
        return [f"{what}: not drawn"]
    if box["left"] < 0 or box["right"] > width:
        return [f"{what} spans x = {box['left']:.0f}..{box['right']:.0f}, outside 0..{width}"]
    return []


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), WINDOWS, ids=[f"{w}x{h}" for w, h in WINDOWS])
def test_report_fits_the_window_and_long_inputs_scroll_inside_figures(
    browser, long_report, width, height
):
    page, problems, requests = open_report(browser, long_report, width, height)
    try:
        found = page.evaluate(MEASURE)
        assert found["innerWidth"] == width
        wrong = []
        if found["scrollWidth"] != width:
            wrong.append(f"the page scrolls sideways: {found['scrollWidth']} px wide")
        for index, figure in enumerate(found["figures"]):
            what = f"figure {index} ({figure['titleText']!r})"
            wrong += outside(figure["title"], width, f"{what}: title")
            wrong += outside(figure["plot"], width, f"{what}: plot area")
            wrong += outside(figure["yaxis"], width, f"{what}: layer axis")
            if figure["heatmap"]:
                wrong += outside(figure["colorbar"], width, f"{what}: colour bar")
        # The table of contents links every section, and every link lands on one.
        links = found["links"]
        if not links or len(links) != found["sections"]:
            wrong.append(f"{len(links)} contents links for {found['sections']} sections")
        wrong += [f"link {link['href']} leads nowhere" for link in links if not link["target"]]
        assert wrong == [], "\n".join(wrong)
        assert len(found["figures"]) == N_FIGURES
        assert sum(figure["heatmap"] for figure in found["figures"]) == 9
        rendered = page.evaluate(
            "[...document.querySelectorAll('[id^=hooklens-]')]"
            ".filter((el) => el.children.length > 0).length"
        )
        assert rendered == N_WIDGETS
        assert_hover_shows_the_value_and_the_top_5(page)
        assert_last_token_reachable(page, width)
        assert problems == []
        assert all(re.match(r"(file|data|blob|about):", url) for url in requests), requests
    finally:
        page.close()


def assert_hover_shows_the_value_and_the_top_5(page):
    """Hovering a cell shows its layer and value (the template) and the lens's top 5
    (the shared per-cell table): both halves arrive in the browser."""
    gd = page.locator(".js-plotly-plot").first
    box = gd.locator(".nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + box["height"] - 10)  # layer 0, first token
    page.wait_for_timeout(300)
    shown = gd.locator(".hoverlayer").text_content()
    assert re.match(r"layer 0Forward KL: [0-9.e+-]+ nats", shown), shown
    assert shown.count("%") == 5, shown
    page.mouse.move(0, 0)


def assert_last_token_reachable(page, width):
    """Drag the first heatmap's range slider to the far right: the last input token's
    column comes into the plot area, inside the window."""
    gd = page.locator(".js-plotly-plot").first
    slider = gd.locator(".rangeslider-slidebox")
    assert slider.count() == 1, "a 64-token heatmap should scroll with a range slider"
    box = slider.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(width + 500, box["y"] + box["height"] / 2, steps=10)
    page.mouse.up()
    page.wait_for_timeout(300)
    last = page.evaluate(
        """(gd) => {
          const ticks = [...gd.querySelectorAll('.xaxislayer-above .xtick text')];
          const plot = gd.querySelector('.nsewdrag').getBoundingClientRect();
          const t = ticks[ticks.length - 1];
          const r = t.getBoundingClientRect();
          return {text: t.textContent, centre: (r.left + r.right) / 2,
                  left: plot.left, right: plot.right, n: gd.data[0].x.length,
                  range: gd.layout.xaxis.range};
        }""",
        gd.element_handle(),
    )
    assert last["range"][1] == pytest.approx(last["n"] - 0.5, abs=0.01)
    assert last["text"].rstrip("\u200c") == LONG_TEXT.split()[-1]
    assert last["left"] <= last["centre"] <= last["right"] <= width


def library_copies(document: str, code: str) -> int:
    """How many copies of `code` `document` runs: inlined as text, or as a script
    element holding it gzip-compressed and base64-encoded."""
    signature = code[-300:]
    copies = document.count(signature)
    for packed in re.findall(r"<script[^>]*>\s*(H4sI[A-Za-z0-9+/=]+)\s*</script>", document):
        copies += gzip.decompress(base64.b64decode(packed)).decode().count(signature)
    return copies


def test_report_is_at_most_6_mb_with_one_copy_of_each_library(long_report):
    from plotly.offline import get_plotlyjs

    from hooklens.plotting.widgets import circuitsvis_bundle

    document = long_report.read_text(encoding="utf-8")
    assert library_copies(document, get_plotlyjs()) == 1
    assert library_copies(document, circuitsvis_bundle()) == 1
    assert re.search(r"<script[^>]*\bsrc=", document) is None  # nothing fetched
    size = long_report.stat().st_size
    assert size <= 6_000_000, f"{size:,} bytes"


def test_report_writes_shared_hover_tables_and_labels_once(long_report):
    """The top-5 hover table of a lens is the same in its four heatmaps: written once."""
    document = long_report.read_text(encoding="utf-8")
    tables = re.findall(r"hooklens\.data\[\d+\]=(\[\[.*?\]\]);", document)
    assert len(tables) == len(set(tables))
    top5 = [table for table in tables if "%<br>" in table and "Δ" not in table]
    assert len(top5) == 2  # one per lens, shared by its four heatmaps
    assert document.count('"colorway"') == 1  # plotly's default template: one copy
    # Everything but the libraries: 64 positions × 4 rows × 2 lenses, 9 heatmaps with
    # hover tables, 4 widgets (137 kB when written; 706 kB before hover tables were shared).
    libraries = sum(len(m) for m in re.findall(r"<script[^>]*>\s*(H4sI[^<]*)</script>", document))
    assert len(document.encode()) - libraries < 250_000
