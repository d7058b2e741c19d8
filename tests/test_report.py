"""The HTML report is one self-contained file that renders in a browser with no network."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from hooklens import LogitLens, PredictionTrajectory, TunedLens, next_token_targets
from hooklens.cli import main as cli_main
from hooklens.evaluation.per_layer import layer_means
from hooklens.report import trajectory_report
from tests.browser import open_page
from tests.conftest import N_LAYERS, make_bridge

WORDS = " ".join(f"w{i}" for i in (5, 17, 33, 5, 60, 71, 17, 9, 88, 42))


@pytest.fixture(scope="module")
def model(word_tokenizer):
    return make_bridge(word_tokenizer, "llama")


@pytest.fixture(scope="module")
def report(model, tmp_path_factory):
    torch.manual_seed(0)
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for param in lens.parameters():
            param.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("report") / "report.html"
    return trajectory_report(model, WORDS, {"tuned lens": lens}, path)


def test_report_inlines_its_code_once_and_fetches_nothing(report):
    text = report.read_text()
    assert re.search(r"<script[^>]*\bsrc=", text) is None  # no external scripts
    assert re.search(r"<link[^>]*\bhref=", text) is None
    from plotly.offline import get_plotlyjs

    from hooklens.plotting.page import unpack_libraries
    from hooklens.plotting.widgets import circuitsvis_bundle

    # each library inlined exactly once (compressed), and no plain copy beside it
    assert unpack_libraries(text) == {
        "plotly.js": [get_plotlyjs()],
        "circuitsvis": [circuitsvis_bundle()],
    }
    assert text.count(get_plotlyjs()[-300:]) == text.count(circuitsvis_bundle()[-300:]) == 0
    # 4 statistics for each of 2 lenses, their JS divergence, and 2 comparison figures.
    assert text.count('class="plotly-graph-div"') == 11
    assert text.count("hooklens.widget(") == 4


def test_report_compares_the_lenses_per_layer_in_a_table(report, model):
    text = report.read_text()
    assert "Which lens to trust, per layer" in text
    table = text[text.index('<table class="lens-comparison">') :]
    table = table[: table.index("</table>")]
    assert table.count("</td></tr>") == N_LAYERS + 1  # a row per layer and the output
    tokens = model.to_tokens(WORDS)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    logit = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(model), tokens, cache, logits, targets=next_token_targets(tokens)
    )
    kl_at_layer_0 = layer_means(logit)["kl_to_output"][0]
    first_cell = table.split("<td>")[1].split("</td>")[0]  # KL, logit lens, layer 0
    assert first_cell == f"{kl_at_layer_0:.3f}" and kl_at_layer_0 > 0


@pytest.mark.slow
def test_report_renders_in_headless_chromium_offline(report, tmp_path):
    page = open_page(report, tmp_path)
    assert page.problems == []
    assert page.network == []
    assert page.dom.count('class="main-svg"') >= 11  # plotly drew every figure
    widget_divs = page.dom.split('id="hooklens-')[1:]
    assert len(widget_divs) == 4
    assert all(div.split(">", 1)[1].startswith("<div") for div in widget_divs)  # rendered
    from PIL import Image

    pixels = np.asarray(Image.open(page.screenshot).convert("L"), dtype=float)
    assert pixels.std() > 20  # not a blank page


@pytest.mark.slow
def test_browser_check_catches_a_broken_page(tmp_path):
    """The check above can fail: a script error and a CDN script are both reported."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<html><head></head><body>"
        '<script src="https://cdn.plot.ly/plotly-2.0.0.min.js"></script>'
        '<script>throw new Error("boom")</script></body></html>'
    )
    page = open_page(broken, tmp_path)
    assert any("boom" in problem for problem in page.problems)
    assert any("cdn.plot.ly" in problem for problem in page.problems)


def test_cli_writes_the_report_for_the_embedded_default(monkeypatch, tmp_path, model):
    from hooklens import models

    monkeypatch.setattr(models, "load", lambda name, **kw: model)
    out = tmp_path / "cli.html"
    assert cli_main(["report", "--text", WORDS, "--output", str(out)]) == 0
    assert out.stat().st_size > 1_000_000
    assert out.read_text().count('class="plotly-graph-div"') == 4


def test_cli_refuses_empty_text(capsys):
    assert cli_main(["report", "--text", "  "]) == 2
    assert "give some text" in capsys.readouterr().err


def test_report_refuses_empty_text(model, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        trajectory_report(model, "", path=tmp_path / "x.html")
