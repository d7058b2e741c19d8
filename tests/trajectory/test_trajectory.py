"""PredictionTrajectory's streamed statistics equal a full-vocabulary computation."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from hooklens import InputError, LogitLens, NonFiniteActivationError, TunedLens, stats
from hooklens.trajectory import PredictionTrajectory, next_token_targets
from tests.conftest import N_LAYERS, VOCAB, make_hooked, randomised

CLOSE = dict(atol=1e-5, rtol=1e-5)


def _tuned(model, seed: int = 0) -> TunedLens:
    return randomised(TunedLens.from_model(model), seed)


def _full_log_probs(lens, cache, logits, mask_ids=None):
    """[..., layer + 1, pos, vocab] the straightforward (materialising) way."""
    rows = []
    for layer in range(lens.n_layers):
        row = lens(cache[f"blocks.{layer}.hook_resid_pre"], layer).detach()
        if mask_ids is not None:
            row = row.clone()
            for b in range(row.shape[0]):
                row[b, :, mask_ids[b]] = -math.inf
        rows.append(torch.log_softmax(row, -1))
    rows.append(torch.log_softmax(logits.detach(), -1))
    return torch.stack(rows, dim=-3)


def _assert_matches(got: np.ndarray, expected: torch.Tensor):
    expected = expected.float().numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(
        np.nan_to_num(got, nan=-7.0), np.nan_to_num(expected, nan=-7.0), **CLOSE
    )


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(4, VOCAB, (2, 9), generator=generator)
    anti = torch.randint(4, VOCAB, (2, 9), generator=generator)
    return ids, next_token_targets(ids), anti


@pytest.mark.parametrize("lens_kind", ["logit", "tuned"])
def test_every_statistic_equals_the_full_vocabulary_computation(any_model, batch, lens_kind):
    ids, targets, anti = batch
    logits, cache = any_model.run_with_cache(ids)
    lens = LogitLens.from_model(any_model) if lens_kind == "logit" else _tuned(any_model)
    traj = PredictionTrajectory.from_lens_and_cache(
        lens, ids, cache, logits, targets=targets, anti_targets=anti
    )
    log_p = _full_log_probs(lens, cache, logits)  # [batch, layer + 1, pos, vocab]
    expand = lambda t: t[:, None, :].expand(log_p.shape[:-1])  # noqa: E731
    _assert_matches(traj.entropy().stats, stats.entropy(log_p))
    _assert_matches(traj.forward_kl().stats, stats.kl_divergence(log_p[:, -1:], log_p))
    _assert_matches(traj.max_probability().stats, stats.max_probability(log_p))
    _assert_matches(traj.cross_entropy().stats, stats.cross_entropy(log_p, expand(targets)))
    expected_rank = stats.rank(log_p, expand(targets)).float()
    _assert_matches(traj.rank().stats, torch.where(expected_rank > 0, expected_rank, math.nan))
    _assert_matches(
        traj.log_prob_diff().stats, stats.log_prob_diff(log_p, expand(targets), expand(anti))
    )


def test_comparisons_equal_the_full_vocabulary_computation(any_model, batch):
    ids, _, _ = batch
    logits, cache = any_model.run_with_cache(ids)
    lens_a, lens_b = LogitLens.from_model(any_model), _tuned(any_model)
    a = PredictionTrajectory.from_lens_and_cache(lens_a, ids, cache, logits)
    b = PredictionTrajectory.from_lens_and_cache(lens_b, ids, cache, logits)
    log_p, log_q = _full_log_probs(lens_a, cache, logits), _full_log_probs(lens_b, cache, logits)
    _assert_matches(a.kl_divergence(b).stats, stats.kl_divergence(log_p, log_q))
    _assert_matches(a.js_divergence(b).stats, stats.js_divergence(log_p, log_q))
    _assert_matches(a.total_variation(b).stats, stats.total_variation(log_p, log_q))
    np.testing.assert_allclose(a.js_divergence(b).stats, b.js_divergence(a).stats, atol=1e-6)
    assert np.all(a.kl_divergence(a).stats < 1e-5)


def test_mask_input_hides_each_sequences_own_tokens(hooked, batch):
    ids, targets, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    lens = LogitLens.from_model(hooked)
    traj = PredictionTrajectory.from_lens_and_cache(
        lens, ids, cache, logits, targets=targets, mask_input=True
    )
    log_p = _full_log_probs(lens, cache, logits, mask_ids=ids)
    _assert_matches(traj.entropy().stats, stats.entropy(log_p))
    top = traj._readout.topk_ids.reshape(N_LAYERS + 1, 2, 9, -1)[:N_LAYERS, :, :, 0]
    for b in range(2):
        assert not np.isin(top[:, b].numpy(), ids[b].numpy()).any()
    # A masked target is impossible for the lens rows: infinite cross-entropy there.
    ce = traj.cross_entropy().stats
    assert (ce[:, :N_LAYERS][~np.isnan(ce[:, :N_LAYERS])] > 1e30).any()


def test_output_row_is_the_models_own_prediction(hooked, batch):
    ids, targets, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    traj = PredictionTrajectory.from_lens_and_cache(
        _tuned(hooked), ids, cache, logits, targets=targets
    )
    assert np.all(traj.forward_kl().stats[:, -1] < 1e-5)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="none"
    )
    np.testing.assert_allclose(
        traj.cross_entropy().stats[:, -1, :-1].reshape(-1), loss.detach().numpy(), **CLOSE
    )


def test_slice_sequence_keeps_the_statistics_of_those_positions(hooked, batch):
    ids, targets, anti = batch
    logits, cache = hooked.run_with_cache(ids)
    lens = _tuned(hooked)
    traj = PredictionTrajectory.from_lens_and_cache(
        lens, ids, cache, logits, targets=targets, anti_targets=anti
    )
    part = traj.slice_sequence(slice(2, 6))
    assert part.num_tokens == 4
    for name in ("entropy", "forward_kl", "cross_entropy", "rank", "log_prob_diff"):
        np.testing.assert_array_equal(
            getattr(part, name)().stats, getattr(traj, name)().stats[..., 2:6]
        )
    other = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(hooked), ids, cache, logits
    )
    np.testing.assert_allclose(
        part.js_divergence(other.slice_sequence(slice(2, 6))).stats,
        traj.js_divergence(other).stats[..., 2:6],
        atol=1e-6,
    )


def test_from_lens_and_model_equals_from_cache(any_model, batch):
    ids, targets, _ = batch
    lens = LogitLens.from_model(any_model)
    logits, cache = any_model.run_with_cache(ids[:1])
    from_cache = PredictionTrajectory.from_lens_and_cache(
        lens, ids[:1], cache, logits, targets=targets[:1]
    )
    from_model = PredictionTrajectory.from_lens_and_model(
        lens, any_model, ids[0].tolist(), targets=targets[0]
    )
    assert from_model.batch_shape == ()
    np.testing.assert_allclose(from_model.entropy().stats, from_cache.entropy().stats[0], atol=1e-5)
    np.testing.assert_allclose(from_model.rank().stats, from_cache.rank().stats[0])


def test_units_in_bits(hooked, batch):
    ids, _, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    traj = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(hooked), ids, cache, logits
    )
    np.testing.assert_allclose(
        traj.entropy("bits").stats, traj.entropy().stats / math.log(2), rtol=1e-6
    )
    assert traj.entropy("bits").units == "bits"


def test_delta_log_prob_diff_has_one_row_per_step(hooked, batch):
    ids, targets, anti = batch
    logits, cache = hooked.run_with_cache(ids)
    traj = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(hooked), ids, cache, logits, targets=targets, anti_targets=anti
    )
    delta = traj.log_prob_diff(delta=True)
    full = traj.log_prob_diff().stats
    np.testing.assert_allclose(delta.stats, full[:, 1:] - full[:, :-1])
    assert delta.layer_labels.tolist() == ["0→1", "1→2", "2→output"]


def test_repr_is_informative(hooked, batch):
    ids, targets, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    traj = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(hooked), ids, cache, logits, targets=targets
    )
    assert repr(traj).startswith(
        f"PredictionTrajectory(layers={N_LAYERS}, pos=9, batch=(2,), lens=LogitLens("
    )
    assert "targets=yes" in repr(traj)


# --- bad input --------------------------------------------------------------------------------


def test_statistics_needing_targets_say_so(hooked, batch):
    ids, _, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    traj = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(hooked), ids, cache, logits
    )
    with pytest.raises(ValueError, match="needs targets"):
        traj.cross_entropy()
    with pytest.raises(ValueError, match="targets and anti_targets"):
        traj.log_prob_diff()


@pytest.mark.outside_annotations
def test_mismatched_inputs_are_refused(hooked, batch):
    ids, targets, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    lens = LogitLens.from_model(hooked)
    with pytest.raises(ValueError, match="same run"):
        PredictionTrajectory.from_lens_and_cache(lens, ids[:, :5], cache, logits)
    with pytest.raises(ValueError, match="targets are"):
        PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits, targets=targets[:1])
    with pytest.raises(ValueError, match="the vocabulary has 96 tokens"):
        PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits, targets=ids + VOCAB)
    with pytest.raises(ValueError, match="at least one token"):
        PredictionTrajectory.from_lens_and_model(lens, hooked, [])


def test_comparing_different_shapes_is_refused(hooked, batch):
    ids, _, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    lens = LogitLens.from_model(hooked)
    traj = PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits)
    other_model = make_hooked("RMS", processing=True, seed=5)
    other_logits, other_cache = other_model.run_with_cache(ids[:, :4])
    other = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(other_model), ids[:, :4], other_cache, other_logits
    )
    with pytest.raises(ValueError, match="same layers, positions"):
        traj.kl_divergence(other)


def test_from_lens_and_model_accepts_text(model_zoo):
    bridge = model_zoo["bridge-llama"]
    text = "w5 w6 w7 w8"
    traj = PredictionTrajectory.from_lens_and_model(LogitLens.from_model(bridge), bridge, text)
    expected = bridge.to_tokens(text)[0]
    assert torch.equal(traj.input_ids, expected.cpu())
    assert traj.entropy().sequence_labels.tolist()[-1] == "w8"


def test_nan_residuals_are_refused(hooked, batch):
    ids, _, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    cache.cache_dict["blocks.1.hook_resid_pre"][0, 3, 5] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="layer 1"):
        PredictionTrajectory.from_lens_and_cache(LogitLens.from_model(hooked), ids, cache, logits)


def test_nan_model_logits_are_refused(hooked, batch):
    ids, _, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    logits = logits.clone()
    logits[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="model_logits hold NaN"):
        PredictionTrajectory.from_lens_and_cache(LogitLens.from_model(hooked), ids, cache, logits)


def test_top_predictions_are_the_most_likely_tokens(hooked, batch):
    ids, _, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    lens = LogitLens.from_model(hooked)
    traj = PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits)
    top_ids, top_probs = traj.top_predictions()
    assert top_ids.shape == (2, N_LAYERS + 1, 9, traj.topk)
    expected = _full_log_probs(lens, cache, logits).topk(traj.topk, dim=-1)
    torch.testing.assert_close(top_probs, expected.values.exp(), atol=1e-6, rtol=1e-5)
    assert torch.equal(top_ids, expected.indices)


# --- from_log_probs: probabilities and padding (issue 23, case 6) ------------------------


def _probabilities(batch: int = 2, pos: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(batch, N_LAYERS + 1, pos, VOCAB, generator=generator)
    return logits.softmax(-1)


def _entropy64(log_probs: torch.Tensor) -> np.ndarray:
    p = log_probs.double().log_softmax(-1).exp()
    return (-torch.special.xlogy(p, p).sum(-1)).numpy()


def test_probabilities_whose_first_row_is_padding_are_refused():
    """The issue's case: probabilities, position 0 padded with zeros, were read as logits
    (entropy ≈ ln 96 = 4.56 instead of the truth) because only the first row was checked."""
    probs = _probabilities()
    probs[0, :, 0] = 0.0  # sequence 0 is left-padded by one position, in every row
    ids = torch.randint(4, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"look like probabilities.*probs\.log\(\)") as info:
        PredictionTrajectory.from_log_probs(probs, ids)
    assert "layer 0" in str(info.value) and "sum to 1" in str(info.value)
    # The way the message points: their logarithm, the padding masked, reads the truth.
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    traj = PredictionTrajectory.from_log_probs(probs.log(), ids, attention_mask=mask)
    expected = _entropy64(probs.log().clamp_min(-1e30))
    expected[0, :, 0] = np.nan
    got = traj.entropy().stats
    assert np.isnan(got[0, :, 0]).all()
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(expected), atol=1e-5)


@pytest.mark.parametrize(
    "where",
    ["every row", "one output row", "one position", "bfloat16", "numpy", "no batch axis"],
)
def test_probabilities_anywhere_are_refused(where):
    probs = _probabilities(seed=2)
    log_probs = probs.log()
    ids = torch.randint(4, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    given: object = probs
    if where == "one output row":  # log-probabilities, but the output row as probabilities
        given = log_probs.clone()
        given[1, -1, 4] = probs[1, -1, 4]
    elif where == "one position":
        given = torch.zeros_like(probs)  # zeros elsewhere: padding, no evidence
        given[1, :, 2] = probs[1, :, 2]
    elif where == "bfloat16":
        given = probs.bfloat16()
    elif where == "numpy":
        given = probs.double().numpy()
    elif where == "no batch axis":
        given, ids = probs[0], ids[0]
    with pytest.raises(ValueError, match="look like probabilities"):
        PredictionTrajectory.from_log_probs(given, ids)


def test_logits_in_zero_one_that_are_no_distribution_are_read_as_logits():
    generator = torch.Generator().manual_seed(5)
    logits = torch.rand(2, N_LAYERS + 1, 6, VOCAB, generator=generator)  # rows sum to ~48
    ids = torch.randint(4, VOCAB, (2, 6), generator=generator)
    traj = PredictionTrajectory.from_log_probs(logits, ids)
    np.testing.assert_allclose(traj.entropy().stats, _entropy64(logits), atol=1e-5)


def test_all_zero_positions_need_an_attention_mask():
    """Zero rows at every layer are padding: read as logits they would be a uniform
    distribution counted in every mean, so without a mask they are refused."""
    generator = torch.Generator().manual_seed(6)
    log_probs = torch.randn(2, N_LAYERS + 1, 6, VOCAB, generator=generator).log_softmax(-1)
    log_probs[1, :, 4:] = 0.0  # sequence 1 right-padded by two positions
    ids = torch.randint(4, VOCAB, (2, 6), generator=generator)
    with pytest.raises(ValueError, match=r"all zero at 2 position\(s\).*attention_mask"):
        PredictionTrajectory.from_log_probs(log_probs, ids)
    mask = (log_probs != 0).any(-1).any(-2)  # the expression the message offers
    traj = PredictionTrajectory.from_log_probs(log_probs, ids, attention_mask=mask)
    expected = _entropy64(log_probs)
    expected[1, :, 4:] = np.nan
    got = traj.entropy().stats
    assert (np.isnan(got) == np.isnan(expected)).all()
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(expected), atol=1e-5)
    # Uniform logits on purpose: a mask of ones says so.
    ones = PredictionTrajectory.from_log_probs(log_probs, ids, attention_mask=torch.ones_like(ids))
    np.testing.assert_allclose(ones.entropy().stats, _entropy64(log_probs), atol=1e-5)
    # -inf padding (the log of zero probabilities) is fine where the mask says padding
    log_probs[1, :, 4:] = -math.inf
    with pytest.raises(NonFiniteActivationError, match=r"every entry is -inf.*attention_mask"):
        PredictionTrajectory.from_log_probs(log_probs, ids)
    masked = PredictionTrajectory.from_log_probs(log_probs, ids, attention_mask=mask)
    np.testing.assert_allclose(np.nan_to_num(masked.entropy().stats), np.nan_to_num(got))


def test_a_text_longer_than_the_context_is_cut_with_a_warning(model_zoo):
    """It was cut to n_ctx without a word (20k words → 8,191 tokens, then minutes)."""
    from hooklens.report import TextCutWarning

    bridge = model_zoo["bridge-llama"]
    n_ctx = bridge.cfg.n_ctx
    text = " ".join(f"w{5 + i % 80}" for i in range(n_ctx + 10))
    n_tokens = bridge.to_tokens(text, truncate=False).shape[-1]
    lens = LogitLens.from_model(bridge)
    with pytest.warns(TextCutWarning, match=rf"first {n_ctx} of {n_tokens} tokens") as record:
        traj = PredictionTrajectory.from_lens_and_model(lens, bridge, text)
    message = str(record[0].message)
    assert f"the last {n_tokens - n_ctx} tokens are not read" in message
    assert "Split the text" in message
    assert record[0].filename == __file__  # points at the caller
    assert torch.equal(traj.input_ids, bridge.to_tokens(text, truncate=False)[0, :n_ctx].cpu())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", TextCutWarning)  # a text that fits: no warning
        PredictionTrajectory.from_lens_and_model(lens, bridge, "w5 w6 w7")


def test_the_default_topk_keeps_the_whole_vocabulary_when_it_has_fewer_than_five_tokens():
    """Found porting tuned-lens's tests: a 3-token vocabulary raised "topk must be at
    most 3, got 5" although no topk was passed."""
    log_probs = torch.tensor(
        [[[0.1, 0.2, 0.3], [0.6, 0.5, 0.4]], [[0.85, 0.8, 0.9], [1.0, 1.1, 1.2]]]
    )
    traj = PredictionTrajectory.from_log_probs(log_probs, input_ids=[1, 1], targets=[0, 1])
    assert traj.topk == 3
    assert traj.top_predictions()[0].shape == (2, 2, 3)
    np.testing.assert_array_equal(traj.rank().stats, [[3, 2], [2, 2]])
    assert PredictionTrajectory.from_log_probs(log_probs, [1, 1], topk=2).topk == 2
    # A topk given larger than the vocabulary is still refused, saying the bound.
    with pytest.raises(InputError, match=r"topk must be at most the vocabulary's 3 tokens, got 5"):
        PredictionTrajectory.from_log_probs(log_probs, input_ids=[1, 1], topk=5)
    for constructor in (
        PredictionTrajectory,
        PredictionTrajectory.from_lens_and_cache,
        PredictionTrajectory.from_lens_and_model,
        PredictionTrajectory.from_log_probs,
    ):
        assert inspect.signature(constructor).parameters["topk"].default is None


def test_the_default_topk_is_five_where_the_vocabulary_has_more(hooked, batch):
    ids, _, _ = batch
    logits, cache = hooked.run_with_cache(ids)
    traj = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(hooked), ids, cache, logits
    )
    assert traj.topk == 5 < VOCAB
