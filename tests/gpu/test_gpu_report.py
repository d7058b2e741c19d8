"""The self-contained HTML report, built from a model on the device: every figure and
widget, its libraries inlined once, and its per-layer table read off the device's
trajectories."""

from __future__ import annotations

import re

import pytest
import torch

from hooklens import LogitLens, PredictionTrajectory, next_token_targets
from hooklens.evaluation.per_layer import layer_means
from hooklens.report import trajectory_report
from tests.devices.test_device_discipline import _lenses

pytestmark = pytest.mark.cuda

WORDS = " ".join(f"w{i}" for i in (5, 17, 33, 5, 60, 71, 17, 9, 88, 42))


def test_the_report_of_a_model_on_the_device(on_device, tmp_path):
    lens = _lenses(on_device)[1]
    path = trajectory_report(on_device, WORDS, {"tuned lens": lens}, tmp_path / "report.html")
    text = path.read_text()
    assert re.search(r"<script[^>]*\bsrc=", text) is None  # nothing fetched
    from plotly.offline import get_plotlyjs

    from hooklens.plotting.page import unpack_libraries
    from hooklens.plotting.widgets import circuitsvis_bundle

    assert unpack_libraries(text) == {
        "plotly.js": [get_plotlyjs()],
        "circuitsvis": [circuitsvis_bundle()],
    }
    # 4 statistics for each of 2 lenses, their JS divergence, and 2 comparison figures
    assert text.count('class="plotly-graph-div"') == 11
    assert text.count("hooklens.widget(") == 4
    # the table's first cell: the logit lens's mean KL at layer 0, as the device has it
    tokens = on_device.to_tokens(WORDS)
    with torch.no_grad():
        logits, cache = on_device.run_with_cache(tokens)
    logit = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(on_device), tokens, cache, logits, targets=next_token_targets(tokens)
    )
    kl_at_layer_0 = layer_means(logit)["kl_to_output"][0]
    table = text[text.index('<table class="lens-comparison">') :]
    first_cell = table.split("<td>")[1].split("</td>")[0]
    assert first_cell == f"{kl_at_layer_0:.3f}" and kl_at_layer_0 > 0
