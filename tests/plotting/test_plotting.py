"""Figures, labels, token formatting and widgets show what the trajectory computed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hooklens import LogitLens
from hooklens.plotting.tokens import TokenFormatter, decode_token
from hooklens.trajectory import PredictionTrajectory, next_token_targets
from hooklens.trajectory.statistic import TrajectoryLabels, TrajectoryStatistic
from tests.conftest import N_LAYERS, make_bridge

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("token", "text"),
    [
        ("Ġthe", " the"),  # GPT-2 byte-level BPE: Ġ is a space
        ("Ċ", "\n"),
        ("ĊĊ", "\n\n"),
        ("âĢĻ", "’"),  # a 3-byte UTF-8 character in byte-level form
        ("âĢ", "\\xe2\\x80"),  # a fragment of one shows its bytes
        ("▁the", " the"),  # SentencePiece
        ("<0x0A>", "\n"),
        ("<0xE2>", "<0xE2>"),  # a lone non-ASCII byte stays as written
        ("hello", "hello"),
        ("é", "é"),  # Latin-1 text that is not byte-level stays itself
    ],
)
def test_tokens_decode_to_their_text(token, text):
    assert decode_token(token) == text


def test_formatter_makes_whitespace_visible_and_truncates():
    formatter = TokenFormatter()
    assert formatter.format("Ġinterpretability") == "_inter…"
    assert formatter.format("Ċ") == "\\n"
    assert formatter.format("▁x") == "_x"
    assert formatter.format(None) == "<unk>"
    assert TokenFormatter(max_string_len=None).format("Ġinterpretability") == "_interpretability"
    assert formatter.vectorized_format(np.array([["Ġa", "Ċ"]])).tolist() == [["_a", "\\n"]]


@pytest.mark.slow
def test_formatter_reads_the_embedded_models_byte_level_tokens():
    from hooklens.models import _embedded_hf_model

    _, tokenizer = _embedded_hf_model("smollm2-135m")
    text = "Don’t stop\nnow"
    ids = tokenizer(text)["input_ids"]
    shown = TokenFormatter(
        max_string_len=None, whitespace_replacement=" ", newline_replacement="\n"
    )
    assert "".join(shown.format_ids(tokenizer, np.array(ids)).tolist()) == text


@pytest.fixture(scope="module")
def trajectory(word_tokenizer):
    model = make_bridge(word_tokenizer, "llama")
    ids = torch.tensor([[5, 17, 33, 5, 60, 71]])
    logits, cache = model.run_with_cache(ids)
    return PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(model), ids, cache, logits, targets=next_token_targets(ids)
    )


def test_figure_shows_layers_tokens_and_top_predictions(trajectory):
    stat = trajectory.entropy()
    figure = stat.figure(title="Entropy", token_width=50)
    (heatmap,) = figure.data
    assert np.asarray(heatmap.z).shape == (N_LAYERS + 1, 6)
    np.testing.assert_allclose(np.asarray(heatmap.z), stat.stats[0])
    assert list(heatmap.y) == ["0", "1", "2", "output"]
    assert [x.rstrip("\u200c") for x in heatmap.x] == ["w5", "w17", "w33", "w5", "w60", "w71"]
    assert len(set(heatmap.x)) == 6  # repeated tokens stay separate columns
    top1 = trajectory._readout.topk_ids[:, :, 0]
    assert np.asarray(heatmap.text)[-1, 0] == f"w{top1[-1, 0].item()}"
    # The hover: a template for what every cell shares (layer, value), the per-cell
    # top-k table in customdata (one string per cell, not the template repeated).
    assert heatmap.hovertemplate.startswith("layer %{y}<br>Entropy: %{z:.4~g} nats")
    assert heatmap.hovertemplate.endswith("%{customdata}<extra></extra>")
    hover = np.asarray(heatmap.customdata)[-1, 0]
    assert "layer" not in hover and "Entropy" not in hover
    assert f"w{top1[-1, 0].item()}" in hover and hover.count("%") == 5  # the top 5
    assert figure.layout.width == 200 + 50 * 6


def test_clip_and_stride(trajectory):
    stat = trajectory.entropy()
    clipped = stat.clip(0.5, 1.0)
    assert clipped.stats.min() >= 0.5 and clipped.stats.max() <= 1.0
    assert (clipped.min, clipped.max) == (0.5, 1.0)
    strided = stat.stride(2)
    assert strided.layer_labels.tolist() == ["0", "2", "output"]
    np.testing.assert_array_equal(strided.stats[..., [0, 1, 2], :], stat.stats[..., [0, 2, 3], :])
    assert strided.trajectory_labels.label_strings.shape == (3, 6)
    with pytest.raises(ValueError, match="min must be less than max"):
        stat.clip(1.0, 0.5)
    with pytest.raises(ValueError, match="stride"):
        stat.stride(0)


def test_rank_labels_can_show_the_rank(trajectory):
    shown = trajectory.rank(show_ranks=True).trajectory_labels.label_strings
    ranks = trajectory.rank().stats[0]
    assert shown[0, 0] == str(int(ranks[0, 0]))
    assert shown[0, -1] == ""  # the last position has no target


def test_batched_statistics_plot_their_mean():
    stats = np.random.default_rng(0).random((3, 4, 5))
    stat = TrajectoryStatistic("x", stats)
    np.testing.assert_allclose(stat.matrix, stats.mean(0))
    np.testing.assert_allclose(np.asarray(stat.heatmap().z), stats.mean(0))


def test_log_scale_needs_positive_values():
    stat = TrajectoryStatistic("x", np.array([[0.0, 1.0], [10.0, 100.0]]))
    with pytest.raises(ValueError, match="positive"):
        stat.heatmap(log_scale=True)
    heatmap = stat.clip(1e-3, 100.0).heatmap(log_scale=True)
    assert np.nanmax(np.asarray(heatmap.z)) == pytest.approx(2.0)


def test_labels_must_fit_the_statistic():
    with pytest.raises(ValueError, match="labels are"):
        TrajectoryStatistic(
            "x", np.zeros((3, 4)), trajectory_labels=TrajectoryLabels(np.full((2, 4), "a"))
        )


def test_widgets_carry_the_statistic_and_inline_circuitsvis(trajectory):
    widget = trajectory.entropy().widget()
    assert widget.component == "ColoredTokensMulti"
    assert widget.props["tokens"] == ["w5", "w17", "w33", "w5", "w60", "w71"]
    np.testing.assert_allclose(np.asarray(widget.props["values"]).T, trajectory.entropy().stats[0])
    page = widget._repr_html_()
    assert "CircuitsVis.render(" in page and len(page) > 1_000_000  # bundle inlined: offline
    topk = trajectory.topk_widget(layer=1)
    assert topk.component == "TokenLogProbs"
    assert len(topk.props["topKTokens"]) == 5  # one per position but the last
    ranks = trajectory.rank().stats[0, 1, :-1] - 1
    assert topk.props["correctTokenRank"] == ranks.astype(int).tolist()


@pytest.mark.slow
def test_figures_build_with_plotly_6(tmp_path):
    """Our figures use only plotly API that plotly 6 and 7 share (make test installs 6)."""
    plotly6 = ROOT / ".venv" / "plotly6"
    if not (plotly6 / "plotly").is_dir():
        pytest.skip("plotly 6 not installed beside the venv (make test installs it)")
    script = (
        "import numpy as np, plotly\n"
        "assert plotly.__version__.startswith('6.'), plotly.__version__\n"
        "from hooklens.trajectory.statistic import TrajectoryStatistic, TrajectoryLabels\n"
        "labels = TrajectoryLabels(np.full((4, 5), 'a'), np.full((4, 5, 3, 2), 'b'))\n"
        "stat = TrajectoryStatistic('x', np.random.rand(4, 5), units='nats',\n"
        "                           trajectory_labels=labels)\n"
        "stat.clip(0.1, 0.9).stride(2).figure(title='t').to_html()\n"
        "from hooklens.plotting.page import Page\n"
        "assert 'hooklens.plot(' in Page().figure(stat.figure(title='t'))\n"
        "stat.clip(0.1, 0.9).heatmap(log_scale=True)\n"
        "print('ok', plotly.__version__)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{plotly6}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok 6.")
