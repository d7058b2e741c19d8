"""`hooklens serve`: the explorer app driven in headless Chromium, as a user drives it."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hooklens import TunedLens
from hooklens.exploration import ExploreSession
from tests.browser import chromium
from tests.conftest import randomised
from tests.exploration.conftest import TEXT, fresh_trajectory

pytest.importorskip("dash")
sync_api = pytest.importorskip("playwright.sync_api")

GRAPH = "#heatmap .js-plotly-plot"


@pytest.fixture
def served(model):
    """The app on a free local port, in this process (werkzeug, threaded, as `serve` runs)."""
    from werkzeug.serving import make_server

    from hooklens.exploration.app import build_app

    session = ExploreSession(model, {"tuned": randomised(TunedLens.from_model(model))})
    app = build_app(session, "The cat sat on the mat")
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield session, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1400, "height": 900})
        browser.close()


def _choose(page, dropdown: str, option: str) -> None:
    page.click(f"#{dropdown}")
    page.get_by_role("option", name=option, exact=True).click()


def _title(page) -> str:
    return page.evaluate(f"() => document.querySelector('{GRAPH}').layout.title.text")


def _cells(page) -> np.ndarray:
    """The heatmap's values as plotly.js holds them after decoding (`_fullData`)."""
    rows = page.evaluate(
        f"() => Array.from(document.querySelector('{GRAPH}')._fullData[0].z, r => Array.from(r))"
    )
    return np.array(rows, dtype=float)


def _wait_for_title(page, title: str) -> None:
    page.wait_for_function(
        f"t => document.querySelector('{GRAPH}')?.layout?.title?.text === t", arg=title
    )


def test_typing_a_prompt_and_switching_lens_and_statistic_redraws_the_page(served, page, model):
    session, url = served
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url)
    _wait_for_title(page, "Entropy: tuned")
    page.fill("#text", TEXT)
    page.click("#read")
    _choose(page, "lens", "logit")
    _choose(page, "statistic", "forward_kl")

    fresh = fresh_trajectory(model, session.lenses["logit"]).forward_kl()
    _wait_for_title(page, f"{fresh.name}: logit")
    np.testing.assert_allclose(_cells(page), fresh.matrix, rtol=1e-5, atol=1e-6)
    assert "lens logit" in page.inner_text("#status")
    # everything the page loaded came from the app itself: no CDN
    assert requests and all(r.startswith(url) for r in requests), requests


def test_a_bad_prompt_is_a_message_in_the_page(served, page):
    _, url = served
    page.goto(url)
    _wait_for_title(page, "Entropy: tuned")
    page.fill("#text", "   ")
    page.click("#read")
    page.wait_for_function("() => document.querySelector('#message').innerText.length > 0")
    assert "empty" in page.inner_text("#message")
    assert _title(page) == "Entropy: tuned"  # the last figure stays
    page.fill("#text", " ".join(["the"] * 300))  # longer than the tiny model's context
    page.click("#read")
    page.wait_for_function("() => /more than/.test(document.querySelector('#message').innerText)")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_hooklens_serve_explores_the_embedded_model(page, tmp_path):
    """The command as a user runs it: the embedded SmolLM2, offline, on 127.0.0.1."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "hooklens", "serve", "--port", str(port)]
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 180
        while not any("open http://127.0.0.1" in line for line in lines):
            assert server.poll() is None and time.monotonic() < deadline, "".join(lines)
            lines.append(server.stdout.readline())
        assert re.search(r"model SmolLM2-135M\S* \(30 layers\), lens logit", "".join(lines))
        while not _listening(port):  # the server binds right after saying where
            assert server.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        page.set_default_timeout(120_000)
        page.goto(f"http://127.0.0.1:{port}/")
        _wait_for_title(page, "Entropy: logit")
        _choose(page, "statistic", "rank")
        page.fill("#text", "The capital of Germany is")
        page.click("#read")
        _wait_for_title(page, "Rank: logit")
        assert _cells(page).shape == (31, 5)  # layers + output, the five tokens
        page.fill("#text", "")
        page.click("#read")
        page.wait_for_function("() => /empty/.test(document.querySelector('#message').innerText)")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert shutil.which("chromium")


def test_a_slow_lens_pass_does_not_hold_up_a_page_load(served, monkeypatch):
    """While one request computes (held here until released), another loads the page."""
    import json
    import urllib.request

    session, url = served
    started, release = threading.Event(), threading.Event()
    figure = session.figure

    def slow_figure(*args, **kwargs):
        started.set()
        release.wait(timeout=60)
        return figure(*args, **kwargs)

    monkeypatch.setattr(session, "figure", slow_figure)
    with urllib.request.urlopen(url + "_dash-dependencies", timeout=30) as response:
        dependency = json.load(response)[0]
    body = {
        "output": dependency["output"],
        "outputs": [
            {"id": key.split(".")[0], "property": key.split(".")[1]}
            for key in dependency["output"].strip(".").split("...")
        ],
        "inputs": [
            {**item, "value": {"lens": "tuned", "statistic": "entropy"}.get(item["id"])}
            for item in dependency["inputs"]
        ],
        "state": [{**item, "value": TEXT} for item in dependency["state"]],
        "changedPropIds": ["read.n_clicks"],
    }
    request = urllib.request.Request(
        url + "_dash-update-component",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    answers: list[int] = []
    slow = threading.Thread(target=lambda: answers.append(urllib.request.urlopen(request).status))
    slow.start()
    try:
        assert started.wait(timeout=30), "the callback never started"
        with urllib.request.urlopen(url, timeout=30) as page_load:  # while it is held
            assert page_load.status == 200 and b"_dash-renderer" in page_load.read()
        assert not answers  # the slow request is still being computed
    finally:
        release.set()
        slow.join(timeout=60)
    assert answers == [200]
