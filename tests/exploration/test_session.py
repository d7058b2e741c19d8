"""`ExploreSession`: views equal freshly built trajectories, and cost no lens pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooklens import LogitLens, PredictionTrajectory, TunedLens
from hooklens.errors import InputError
from hooklens.exploration import ExploreSession, View, pin
from tests.conftest import randomised
from tests.exploration.conftest import TEXT, fresh_trajectory


@pytest.fixture
def session(model):
    return ExploreSession(model, {"tuned": randomised(TunedLens.from_model(model))})


def _fresh(session: ExploreSession, lens: str) -> PredictionTrajectory:
    return fresh_trajectory(session.model, session.lenses[lens])


@pytest.mark.parametrize("statistic", ["entropy", "forward_kl", "cross_entropy", "rank"])
def test_the_figure_shows_a_freshly_built_trajectorys_statistic(session, statistic):
    figure = session.figure(TEXT, "tuned", View(statistic))
    expected = getattr(_fresh(session, "tuned"), statistic)()
    np.testing.assert_allclose(figure.data[0].z, expected.matrix, rtol=1e-5, atol=1e-6)
    assert figure.layout.title.text.endswith(": tuned")


def test_a_paired_statistic_compares_the_two_lenses(session):
    figure = session.figure(TEXT, "tuned", View("js_divergence", other="logit"))
    fresh_logit, fresh_tuned = _fresh(session, "logit"), _fresh(session, "tuned")
    expected = fresh_tuned.js_divergence(fresh_logit).matrix
    np.testing.assert_allclose(figure.data[0].z, expected, rtol=1e-5, atol=1e-7)
    assert "tuned vs logit" in figure.layout.title.text
    with pytest.raises(InputError, match="compares two lenses"):
        session.figure(TEXT, "tuned", View("js_divergence"))


def test_view_only_changes_never_rerun_the_model_or_a_lens(session, monkeypatch):
    runs, builds = [], []
    run_with_cache = session.model.run_with_cache
    monkeypatch.setattr(
        session.model, "run_with_cache", lambda *a, **k: runs.append(1) or run_with_cache(*a, **k)
    )
    build = PredictionTrajectory.from_lens_and_cache  # the lens pass happens in here
    monkeypatch.setattr(
        PredictionTrajectory,
        "from_lens_and_cache",
        lambda *a, **k: builds.append(1) or build(*a, **k),
    )
    session.figure(TEXT, "tuned", View("entropy"))
    assert (len(runs), len(builds), session.passes) == (1, 1, 1)
    for view in [
        View("forward_kl"),
        View("rank", window=(2, 6)),
        View("entropy", position=3),
        View("entropy", pinned=pin(session, ["Paris", "Berlin"])),
    ]:
        session.figure(TEXT, "tuned", view)
        session.token_view(TEXT, "tuned", view)
    assert (len(runs), len(builds), session.passes) == (1, 1, 1)
    session.figure(TEXT, "logit", View("entropy"))  # another lens: one pass, same run
    assert (len(runs), len(builds), session.passes) == (1, 2, 2)
    session.figure(TEXT, "tuned", View("kl_divergence", other="logit"))  # both cached
    assert (len(runs), len(builds), session.passes) == (1, 2, 2)
    session.figure("The cat sat on the mat", "tuned", View("entropy"))  # new text
    assert (len(runs), len(builds), session.passes) == (2, 3, 3)


def test_a_window_shows_those_positions_of_the_whole_statistic(session):
    whole = session.statistic(TEXT, "tuned", View("entropy"))
    window = session.statistic(TEXT, "tuned", View("entropy", window=(2, 6)))
    np.testing.assert_array_equal(window.stats, whole.stats[..., 2:6])
    assert list(window.sequence_labels) == list(whole.sequence_labels[2:6])
    labels = window.trajectory_labels.label_strings
    assert (labels == whole.trajectory_labels.label_strings[:, 2:6]).all()
    with pytest.raises(InputError, match="holds none"):
        session.statistic(TEXT, "tuned", View("entropy", window=(50, 60)))


def test_the_token_view_follows_each_pinned_tokens_probability_across_layers(session):
    view = View(position=4, pinned=pin(session, ["Paris", "Berlin"]))
    table = session.token_probabilities(TEXT, "tuned", view)
    fresh = _fresh(session, "tuned")
    assert list(table) == list(view.pinned)
    for row in range(fresh.num_layers + 1):
        probs = fresh.layer_log_probs(row)[0, 4].exp()
        for token, values in table.items():
            assert values[row] == pytest.approx(probs[token].item(), rel=1e-5, abs=1e-7)
    figure = session.token_view(TEXT, "tuned", view)
    assert [trace.name for trace in figure.data] == ["'Paris'", "'Berlin'"]


def test_by_default_the_token_view_pins_every_layers_top_token(session):
    fresh = _fresh(session, "logit")
    top1 = {int(fresh.layer_log_probs(row)[0, -1].argmax()) for row in range(fresh.num_layers + 1)}
    assert set(session.pinned_tokens(TEXT, "logit", View())) == top1


def test_bad_prompts_are_messages_a_page_can_show(session):
    with pytest.raises(InputError, match="empty"):
        session.trajectory("   ", "logit")
    short = ExploreSession(session.model, max_tokens=4)
    with pytest.raises(InputError, match="more than the 4 this model reads"):
        short.trajectory(TEXT, "logit")
    with pytest.raises(InputError, match="no lens named 'jlens'"):
        session.trajectory(TEXT, "jlens")
    with pytest.raises(InputError, match="unknown statistic"):
        session.figure(TEXT, "logit", View("perplexity"))


def test_the_logit_lens_is_always_offered_first(model):
    session = ExploreSession(model, {"mine": LogitLens.from_model(model)})
    assert session.lens_names == ["logit", "mine"]
    tokens = session.tokens(TEXT)
    assert torch.equal(tokens, model.to_tokens(TEXT))
    assert len(set(tokens[0].tolist())) > 5  # the words are in the vocabulary
