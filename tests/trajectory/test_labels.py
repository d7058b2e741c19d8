"""Labels under tuned-lens's names and with its meaning: `largest_prob_labels`,
`largest_delta_in_prob_labels` and `TrajectoryLabels.template_and_customdata`.

Found missing when tuned-lens's own test suite ran against hooklens. Each is checked
against a computation on the full log-probabilities here, and the statistics' labels
are shown to be these labels (their hover lists the first sequence of a batch).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooklens import InputError
from hooklens.trajectory import MIN_PROB_DELTA, PredictionTrajectory, TrajectoryLabels

LAYERS, POS, VOCAB_SMALL = 3, 5, 12  # rows: 3 layers + the output


def _log_probs(seed: int, batch: tuple[int, ...] = (3,)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (*batch, LAYERS + 1, POS, VOCAB_SMALL)
    return (2 * torch.randn(shape, generator=generator)).log_softmax(-1)


@pytest.fixture
def ids():
    return torch.randint(4, VOCAB_SMALL, (3, POS), generator=torch.Generator().manual_seed(5))


def _tokens(ids) -> np.ndarray:
    return np.vectorize(lambda i: f"w{i}")(np.asarray(ids))


def _consolidated(cells: np.ndarray) -> np.ndarray:
    """`[sequence, layer, pos]` → `[layer, pos]`, `*` where the sequences differ."""
    return np.where((cells == cells[:1]).all(0), cells[0], "*")


# --- TrajectoryLabels.template_and_customdata -------------------------------------------------


def test_template_and_customdata_is_the_hover_table_as_plotly_reads_it():
    entries = np.array(
        [[[["cat", "7%"], ["dog", "12%"]]], [[["horse", "1%"], ["ox", "50%"]]]]
    )  # [layer 2, pos 1, rows 2, cols 2]
    labels = TrajectoryLabels(label_strings=np.array([["a"], ["b"]]), hover_over_entries=entries)
    template, customdata = labels.template_and_customdata()
    assert template == (
        "%{customdata[0]}%{customdata[1]}<br>%{customdata[2]}%{customdata[3]}<br><extra></extra>"
    )
    # Each column as wide as its longest entry plus one, entries right-aligned.
    assert customdata.tolist() == [
        [["   cat", "  7%", "   dog", " 12%"]],
        [[" horse", "  1%", "    ox", " 50%"]],
    ]


def test_template_and_customdata_cuts_long_entries_to_their_last_characters():
    entries = np.array([[[["a_very_long_token", "ab"]]]])
    labels = TrajectoryLabels(label_strings=np.array([[""]]), hover_over_entries=entries)
    template, customdata = labels.template_and_customdata(col_width_limit=6)
    assert template == "%{customdata[0]}%{customdata[1]}<br><extra></extra>"
    assert customdata.tolist() == [[["_token", " ab"]]]


def test_template_and_customdata_without_a_hover_table_says_so():
    labels = TrajectoryLabels(label_strings=np.array([["a"]]))
    with pytest.raises(InputError, match="these labels have no hover table"):
        labels.template_and_customdata()
    with pytest.raises(InputError, match="col_width_limit must be at least 1"):
        TrajectoryLabels(np.array([["a"]]), np.array([[[["a"]]]])).template_and_customdata(0)


def test_the_heatmap_of_a_statistic_with_those_labels_still_draws(model_zoo, ids):
    traj = PredictionTrajectory.from_log_probs(_log_probs(0), ids, tokenizer=model_zoo.tokenizer)
    stat = traj.entropy(topk=3)
    template, customdata = stat.trajectory_labels.template_and_customdata()
    heatmap = stat.heatmap(customdata=customdata, hovertemplate=template)
    assert heatmap.hovertemplate == template
    assert np.asarray(heatmap.customdata).shape == (LAYERS + 1, POS, 3 * 2)


# --- largest_prob_labels ------------------------------------------------------------------


def test_largest_prob_labels_list_each_sequences_most_likely_tokens_side_by_side(model_zoo, ids):
    log_probs = _log_probs(1)
    traj = PredictionTrajectory.from_log_probs(
        log_probs, ids, tokenizer=model_zoo.tokenizer, topk=4
    )
    labels = traj.largest_prob_labels(min_prob=0.3, topk=4)
    probs, order = log_probs.exp().sort(-1, descending=True)  # [seq, layer + 1, pos, vocab]
    # Hover: [layer + 1, pos, k, (token, p) × the 3 sequences].
    assert labels.hover_over_entries.shape == (LAYERS + 1, POS, 4, 2 * 3)
    for seq in range(3):
        tokens = labels.hover_over_entries[..., 2 * seq]
        values = labels.hover_over_entries[..., 2 * seq + 1]
        np.testing.assert_array_equal(tokens, _tokens(order[seq, ..., :4]))
        got = np.vectorize(lambda s: float(s[:-1]) / 100)(values)
        np.testing.assert_allclose(got, probs[seq, ..., :4].numpy(), atol=6e-4)  # 1 decimal
    # Cells: the top-1 token where p ≥ min_prob, one row for the batch.
    top = np.where(probs[..., 0].numpy() >= 0.3, _tokens(order[..., 0]), "")
    np.testing.assert_array_equal(labels.label_strings, _consolidated(top))


def test_largest_prob_labels_are_what_every_statistic_carries(model_zoo, ids):
    traj = PredictionTrajectory.from_log_probs(_log_probs(2), ids, tokenizer=model_zoo.tokenizer)
    for n in (1, 2, 3, 7):
        hover = traj.largest_prob_labels(max_entries_to_show=n).hover_over_entries
        assert hover.shape == (LAYERS + 1, POS, traj.topk, 2 * min(n, 3))  # topk capped: 5
    first = traj.largest_prob_labels(min_prob=0.2, topk=3, max_entries_to_show=1)
    for stat in (traj.entropy(min_prob=0.2, topk=3), traj.max_probability(min_prob=0.2, topk=3)):
        np.testing.assert_array_equal(stat.trajectory_labels.label_strings, first.label_strings)
        np.testing.assert_array_equal(
            stat.trajectory_labels.hover_over_entries, first.hover_over_entries
        )
    with pytest.raises(InputError, match="max_entries_to_show must be at least 1"):
        traj.largest_prob_labels(max_entries_to_show=0)
    traj.tokenizer = None
    assert traj.largest_prob_labels() is None  # as tuned-lens: no tokenizer, no labels


# --- largest_delta_in_prob_labels ----------------------------------------------------------


def test_largest_delta_in_prob_labels_list_each_sequences_largest_changes(model_zoo, ids):
    p, q = _log_probs(3), _log_probs(4)
    tokenizer = model_zoo.tokenizer
    a = PredictionTrajectory.from_log_probs(p, ids, tokenizer=tokenizer)
    b = PredictionTrajectory.from_log_probs(q, ids, tokenizer=tokenizer)
    labels = a.largest_delta_in_prob_labels(b, topk=3)
    delta = (q.double().exp() - p.double().exp()).float()  # other − self
    order = delta.abs().argsort(-1, descending=True)
    largest = delta.gather(-1, order)
    assert labels.hover_over_entries.shape == (LAYERS + 1, POS, 3, 2 * 3)
    for seq in range(3):
        tokens = labels.hover_over_entries[..., 2 * seq]
        values = labels.hover_over_entries[..., 2 * seq + 1]
        np.testing.assert_array_equal(tokens, _tokens(order[seq, ..., :3]))
        assert all(v.startswith(("Δ+", "Δ-")) for v in values.ravel())
        got = np.vectorize(lambda s: float(s[1:-1]) / 100)(values)
        np.testing.assert_allclose(got, largest[seq, ..., :3].numpy(), atol=6e-5)  # 2 decimals
    cells = np.where(largest[..., 0].abs().numpy() >= MIN_PROB_DELTA, _tokens(order[..., 0]), "")
    np.testing.assert_array_equal(labels.label_strings, _consolidated(cells))
    # The comparisons carry these labels, their hover listing the first sequence.
    first = a.largest_delta_in_prob_labels(b, topk=3, max_entries_to_show=1)
    for stat in (a.kl_divergence(b, topk=3), a.js_divergence(b, topk=3)):
        np.testing.assert_array_equal(stat.trajectory_labels.label_strings, first.label_strings)
        np.testing.assert_array_equal(
            stat.trajectory_labels.hover_over_entries, first.hover_over_entries
        )
    a.tokenizer = None
    assert a.largest_delta_in_prob_labels(b) is None
    with pytest.raises(InputError, match="same layers, positions, batch"):
        a.largest_delta_in_prob_labels(PredictionTrajectory.from_log_probs(q[:2], ids[:2]))


# --- tuned-lens's own smoke tests, on hooklens -------------------------------------------------


@pytest.mark.parametrize("batch", [(), (2, 2), (1,)])
def test_tuned_lens_label_smoke_tests_pass(model_zoo, batch):
    """tuned-lens's tests/plotting/test_prediction_trajectory.py, ported: a uniform
    trajectory of 3 rows, 10 positions and 12 tokens, with a tokenizer."""
    log_probs = torch.full((*batch, 3, 10, 12), -float(np.log(12)))
    input_ids = torch.ones((*batch, 10), dtype=torch.long)
    traj = PredictionTrajectory.from_log_probs(
        log_probs, input_ids, targets=input_ids, tokenizer=model_zoo.tokenizer
    )
    labels = traj.largest_prob_labels(min_prob=0.1, topk=5)
    assert labels is not None and labels.label_strings.shape == (3, 10)
    assert labels.hover_over_entries.shape[:-1] == (3, 10, 5)
    labels = traj.largest_delta_in_prob_labels(traj, min_prob_delta=0.1, topk=5)
    assert labels is not None and labels.label_strings.shape == (3, 10)
    assert labels.hover_over_entries.shape[:-1] == (3, 10, 5)
