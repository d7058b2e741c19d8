"""`hooklens.explore`: driven through its widgets' state, as a notebook user drives it."""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest

from hooklens import TunedLens, explore
from hooklens.errors import MissingWidgetsWarning
from tests.conftest import randomised
from tests.exploration.conftest import TEXT, fresh_trajectory

pytest.importorskip("ipywidgets")


@pytest.fixture
def explorer(model):
    return explore(model, {"tuned": randomised(TunedLens.from_model(model))}, text=TEXT)


def test_every_control_redraws_what_a_fresh_trajectory_shows(explorer, model):
    session = explorer.session
    tuned, logit = session.lenses["tuned"], session.lenses["logit"]
    np.testing.assert_allclose(
        explorer.figure.data[0].z, fresh_trajectory(model, tuned).entropy().matrix, rtol=1e-5
    )
    explorer.statistic.value = "forward_kl"
    np.testing.assert_allclose(
        explorer.figure.data[0].z,
        fresh_trajectory(model, tuned).forward_kl().matrix,
        rtol=1e-5,
        atol=1e-6,
    )
    explorer.lens.value = "logit"
    np.testing.assert_allclose(
        explorer.figure.data[0].z,
        fresh_trajectory(model, logit).forward_kl().matrix,
        rtol=1e-5,
        atol=1e-6,
    )
    explorer.lens.value, explorer.statistic.value = "tuned", "js_divergence"
    assert not explorer.other.disabled and explorer.other.value == "logit"
    expected = fresh_trajectory(model, tuned).js_divergence(fresh_trajectory(model, logit)).matrix
    np.testing.assert_allclose(explorer.figure.data[0].z, expected, rtol=1e-5, atol=1e-7)
    explorer.window.value = (2, 5)  # positions 2..5, both ends shown
    assert explorer.figure.data[0].z.shape[-1] == 4
    other = "The cat sat on the mat"
    explorer.statistic.value, explorer.text.value = "entropy", other
    np.testing.assert_allclose(
        explorer.figure.data[0].z, fresh_trajectory(model, tuned, other).entropy().matrix, rtol=1e-5
    )
    last = model.to_tokens(other).shape[-1] - 1  # the controls follow the new length
    assert explorer.window.value == (0, last) and explorer.position.value == last


def test_view_only_controls_never_rerun_a_lens_pass(explorer):
    session = explorer.session
    before = session.passes
    explorer.statistic.value = "rank"
    explorer.window.value = (1, 4)
    explorer.position.value = 3
    explorer.pinned.value = "Paris, Berlin"
    assert session.passes == before == 1
    names = [trace.name for trace in explorer.token_figure.data]
    assert names == ["'Paris'", "'Berlin'"]
    explorer.lens.value = "logit"  # a new lens reads the cached run once
    assert session.passes == 2


def test_a_bad_prompt_is_a_message_and_the_last_figure_stays(explorer):
    shown = explorer.figure
    explorer.text.value = "   "
    assert "empty" in explorer.status.value
    assert explorer.figure is shown
    explorer.text.value = TEXT
    assert "lens passes" in explorer.status.value and "tuned" in explorer.status.value


def test_without_ipywidgets_explore_says_what_to_install(model, monkeypatch):
    real_import = builtins.__import__

    def no_widgets(name, *args, **kwargs):
        if name == "ipywidgets":
            raise ImportError("No module named 'ipywidgets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "ipywidgets", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_widgets)
    with pytest.warns(MissingWidgetsWarning, match=r'pip install "hooklens\[notebook\]"'):
        figure = explore(model, text=TEXT)
    assert figure.data[0].type == "heatmap"
