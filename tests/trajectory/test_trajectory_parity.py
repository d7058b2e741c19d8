"""tuned-lens parity of PredictionTrajectory: label options, Δprob labels of comparisons,
and `from_log_probs`, which must equal a lens-built trajectory statistic by statistic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hooklens import (
    InputError,
    InputTypeError,
    LensChangedError,
    LogitLens,
    NonFiniteActivationError,
    TunedLens,
    stats,
)
from hooklens.stats.streaming import pair_stats
from hooklens.trajectory import PredictionTrajectory, next_token_targets
from hooklens.trajectory import readout as trajectory_module
from tests.conftest import N_LAYERS, VOCAB, outside_annotations, randomised

CLOSE = dict(atol=2e-5, rtol=1e-5)
MODELS = ["hooked-rms", "bridge-llama"]  # one of each TransformerLens model class


def _tuned(model, seed: int = 0) -> TunedLens:
    return randomised(TunedLens.from_model(model), seed)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(11)
    ids = torch.randint(4, VOCAB, (2, 7), generator=generator)
    anti = torch.randint(4, VOCAB, (2, 7), generator=generator)
    return ids, next_token_targets(ids), anti


@pytest.fixture(params=["one tile", "small tiles"])
def tiles(request, monkeypatch):
    """The tiny vocabulary fits one tile; small tiles make the stream cross vocabulary
    chunks (40 tokens, the last one shorter) and row blocks (5 of the 14 rows)."""
    if request.param == "small tiles":
        monkeypatch.setattr(trajectory_module, "VOCAB_CHUNK", 40)
        monkeypatch.setattr(trajectory_module, "ROW_BLOCK", 5)


def _log_probs64(lens, cache, logits) -> torch.Tensor:
    """`[batch, layer + 1, pos, vocab]` float64 log-probs, materialised: the reference."""
    rows = [
        lens(cache[f"blocks.{layer}.hook_resid_pre"], layer).detach().double()
        for layer in range(lens.n_layers)
    ]
    rows.append(logits.detach().double())
    return torch.stack(rows, dim=-3).log_softmax(-1)


def _lens_trajectory(model, lens, ids, targets=None, anti=None, tokenizer=None, topk=5):
    logits, cache = model.run_with_cache(ids)
    traj = PredictionTrajectory.from_lens_and_cache(
        lens, ids, cache, logits, targets=targets, anti_targets=anti, topk=topk
    )
    traj.tokenizer = tokenizer
    return traj, _log_probs64(lens, cache, logits)


def _close(got, expected) -> None:
    got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
    assert got.shape == expected.shape
    np.testing.assert_allclose(
        np.nan_to_num(got, nan=-7.0), np.nan_to_num(expected, nan=-7.0), **CLOSE
    )


def _same_ranking(ids_a, ids_b, probs) -> None:
    """Top-k ids agree wherever the probabilities tell them apart (float32 near-ties may
    swap): where they differ, the two tokens' probabilities must be within rounding."""
    ids_a, ids_b = torch.as_tensor(ids_a), torch.as_tensor(ids_b)
    differ = ids_a != ids_b
    p_a, p_b = probs.gather(-1, ids_a), probs.gather(-1, ids_b)
    assert bool(((p_a - p_b)[differ].abs() < 1e-6).all())


# --- 1. label options of single-trajectory statistics -------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_cells_below_min_prob_are_blank_and_the_hover_lists_topk(model_zoo, kind, batch):
    model = model_zoo[kind]
    ids, targets, anti = batch
    traj, _ = _lens_trajectory(
        model, _tuned(model), ids[:1], targets[:1], anti[:1], model_zoo.tokenizer, topk=8
    )
    top_ids, top_probs = traj.top_predictions()  # [1, layer + 1, pos, 8]
    top1 = top_probs[0, ..., 0].numpy()
    min_prob = float(np.median(top1))
    expected_tokens = np.vectorize(lambda i: f"w{i}")(top_ids[0, ..., 0].numpy())
    for stat in (
        traj.entropy(min_prob=min_prob, topk=3),
        traj.cross_entropy(min_prob=min_prob, topk=3),
        traj.forward_kl(min_prob=min_prob, topk=3),
        traj.rank(min_prob=min_prob, topk=3),
        traj.max_probability(min_prob=min_prob, topk=3),
        traj.log_prob_diff(min_prob=min_prob, topk=3),
    ):
        labels = stat.trajectory_labels
        shown = top1 >= min_prob
        assert 0 < shown.sum() < shown.size  # the threshold splits the cells
        np.testing.assert_array_equal(labels.label_strings, np.where(shown, expected_tokens, ""))
        assert labels.hover_over_entries.shape == (N_LAYERS + 1, 7, 3, 2)
        hover_ids = np.vectorize(lambda t: int(t[1:]))(labels.hover_over_entries[..., 0])
        np.testing.assert_array_equal(hover_ids, top_ids[0, ..., :3].numpy())
    # Every top-1 probability is ≥ 1/vocab, so the default min_prob=0 labels every cell.
    assert (traj.entropy().trajectory_labels.label_strings != "").all()
    # topk is capped at what the trajectory kept (topk=8 when built).
    assert traj.entropy(topk=50).trajectory_labels.hover_over_entries.shape[2] == 8
    assert traj.entropy().trajectory_labels.hover_over_entries.shape[2] == 8  # default 10
    with pytest.raises(InputError, match="min_prob must lie in"):
        traj.entropy(min_prob=1.5)
    with (
        pytest.raises(InputTypeError, match="min_prob must be a probability"),
        outside_annotations(),
    ):
        traj.entropy(min_prob="0.1")
    with pytest.raises(InputError, match="topk must be at least 1"):
        traj.max_probability(topk=0)
    with pytest.raises(InputError, match="min_prob must lie in"):
        traj.log_prob_diff(delta=True, min_prob=-0.5)


def test_without_a_tokenizer_there_are_no_labels(model_zoo, batch):
    model = model_zoo["bridge-llama"]
    ids, _, _ = batch
    traj, _ = _lens_trajectory(model, LogitLens.from_model(model), ids)
    assert traj.entropy(min_prob=0.5).trajectory_labels is None
    assert traj.js_divergence(traj).trajectory_labels is None


# --- 2. Δprob labels of comparisons ---------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_delta_prob_labels_equal_a_brute_force_float64_computation(model_zoo, kind, batch, tiles):
    model = model_zoo[kind]
    ids = batch[0].clone()
    ids[1, :4] = ids[0, :4]  # the sequences agree on their first 4 positions (causal model)
    tokenizer = model_zoo.tokenizer
    a, log_p = _lens_trajectory(model, LogitLens.from_model(model), ids, tokenizer=tokenizer)
    b, log_q = _lens_trajectory(model, _tuned(model), ids, tokenizer=tokenizer)
    delta = log_q.exp() - log_p.exp()  # other − self, [batch, layer + 1, pos, vocab]
    order = delta.abs().sort(dim=-1, descending=True)
    expected = delta.gather(-1, order.indices)
    k = 6
    min_prob_delta = float(expected[0, ..., 0].abs()[:N_LAYERS].median())
    for stat in (
        a.kl_divergence(b, min_prob_delta=min_prob_delta, topk=k),
        a.js_divergence(b, min_prob_delta=min_prob_delta, topk=k),
        a.total_variation(b, min_prob_delta=min_prob_delta, topk=k),
    ):
        labels = stat.trajectory_labels
        # Hover: the first sequence's k largest changes (the output row did not change:
        # both lenses end in the same model logits, and it is checked below).
        entries = labels.hover_over_entries[:-1]  # [layer, pos, k, (token, Δp)]
        got = np.vectorize(lambda s: float(s[1:-1]) / 100)(entries[..., 1])
        np.testing.assert_allclose(got, expected[0, :-1, :, :k].numpy(), atol=6e-5)  # 2 decimals
        hover_ids = torch.as_tensor(np.vectorize(lambda t: int(t[1:]))(entries[..., 0]))
        _same_ranking(hover_ids, order.indices[0, :-1, :, :k], delta[0, :-1].abs())
        # Cells: the largest change where |Δp| ≥ min_prob_delta; `*` where sequences differ.
        largest = expected[..., 0].abs()
        cell = np.vectorize(lambda i: f"w{i}")(order.indices[..., 0].numpy())
        cell = np.where((largest >= min_prob_delta).numpy(), cell, "")
        consolidated = np.where((cell[0] == cell[1]), cell[0], "*")
        ambiguous = (largest - min_prob_delta).abs().min(0).values.numpy() < 1e-6
        np.testing.assert_array_equal(labels.label_strings[~ambiguous], consolidated[~ambiguous])
        assert {"", "*"} < set(consolidated[~ambiguous].tolist())  # blanks, `*` and tokens
    # Both lenses end in the same model logits: the output row did not change, so it
    # is blank even with min_prob_delta=0.
    unchanged = a.kl_divergence(b, min_prob_delta=0.0).trajectory_labels
    assert (unchanged.label_strings[-1] == "").all()
    assert (unchanged.hover_over_entries[-1] == "").all()
    assert (unchanged.hover_over_entries[:-1] != "").all()


def test_delta_prob_labels_come_from_the_streamed_pair_pass(model_zoo, batch):
    """The streamed largest changes equal the float64 ones per row, and asking for them
    leaves the divergences bit for bit as they were."""
    model = model_zoo["bridge-llama"]
    ids, _, _ = batch
    _, log_p = _lens_trajectory(model, LogitLens.from_model(model), ids)
    _, log_q = _lens_trajectory(model, _tuned(model), ids)
    z_p, z_q = log_p[:, 1].reshape(-1, VOCAB).float(), log_q[:, 1].reshape(-1, VOCAB).float()

    def chunks():  # vocabulary chunks of 40 tokens, the last one shorter
        for start in range(0, VOCAB, 40):
            vocab = slice(start, min(start + 40, VOCAB))
            yield vocab, z_p[:, vocab].clone(), z_q[:, vocab].clone()

    lse_p, lse_q = torch.logsumexp(z_p, -1), torch.logsumexp(z_q, -1)
    plain = pair_stats(chunks(), lse_p, lse_q)
    labelled = pair_stats(chunks(), lse_p, lse_q, delta_k=7)
    for field in ("kl", "js", "tv"):
        assert torch.equal(getattr(plain, field), getattr(labelled, field))
    assert plain.deltas is None and labelled.delta_k == 7
    delta = (log_q[:, 1].exp() - log_p[:, 1].exp()).reshape(-1, VOCAB)
    expected = delta.gather(-1, delta.abs().argsort(-1, descending=True)[:, :7])
    torch.testing.assert_close(labelled.deltas.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(labelled.deltas, delta.float().gather(-1, labelled.delta_ids))


def test_labels_do_not_change_the_comparison_values(model_zoo, batch):
    model = model_zoo["bridge-llama"]
    ids, _, _ = batch
    a, _ = _lens_trajectory(model, LogitLens.from_model(model), ids)
    b, _ = _lens_trajectory(model, _tuned(model), ids)
    plain = a.kl_divergence(b).stats
    a.tokenizer = model_zoo.tokenizer
    labelled = a.kl_divergence(b, topk=20)
    assert labelled.trajectory_labels.hover_over_entries.shape[2] == 20
    np.testing.assert_array_equal(labelled.stats, plain)
    # A cached pass with more changes serves a smaller topk.
    assert a.js_divergence(b, topk=3).trajectory_labels.hover_over_entries.shape[2] == 3


# --- 3. from_log_probs ------------------------------------------------------------------------


def _compare_all(got: PredictionTrajectory, lens_built: PredictionTrajectory, log_p64) -> None:
    """Every statistic, label and row of `got` equals the lens-built trajectory's."""
    for name in ("entropy", "forward_kl", "cross_entropy", "max_probability", "log_prob_diff"):
        _close(getattr(got, name)().stats, getattr(lens_built, name)().stats)
    _close(got.log_prob_diff(delta=True).stats, lens_built.log_prob_diff(delta=True).stats)
    # The float64 reference, too (entropy and the target's log-prob).
    _close(got.entropy().stats, -(log_p64.exp() * log_p64).sum(-1))
    targets = got.targets
    ce = -log_p64.gather(-1, targets.clamp_min(0)[:, None, :, None].expand(-1, N_LAYERS + 1, -1, 1))
    _close(got.cross_entropy().stats, torch.where(targets[:, None] >= 0, ce[..., 0], math.nan))
    ranks_got, ranks_lens = got.rank().stats, lens_built.rank().stats
    differ = ~np.isclose(np.nan_to_num(ranks_got), np.nan_to_num(ranks_lens))
    assert differ.mean() < 0.02 and np.abs(ranks_got - ranks_lens)[differ].max(initial=0) <= 1
    ids_got, p_got = got.top_predictions()
    ids_lens, p_lens = lens_built.top_predictions()
    _close(p_got, p_lens)
    _same_ranking(ids_got, ids_lens, log_p64.exp())
    for layer in range(N_LAYERS + 1):
        _close(got.layer_log_probs(layer), lens_built.layer_log_probs(layer))
    part, lens_part = got.slice_sequence(slice(2, 6)), lens_built.slice_sequence(slice(2, 6))
    _close(part.forward_kl().stats, lens_part.forward_kl().stats)
    _close(part.cross_entropy().stats, lens_built.cross_entropy().stats[..., 2:6])
    if got.tokenizer is not None:
        shown, expected = got.entropy().trajectory_labels, lens_built.entropy().trajectory_labels
        same = shown.label_strings == expected.label_strings
        assert same.mean() > 0.95  # a near-tie may swap a top-1
        assert got.entropy().figure().data[0].z is not None


@pytest.mark.parametrize("kind", MODELS)
def test_from_log_probs_equals_the_lens_built_trajectory(model_zoo, kind, batch, tiles):
    model = model_zoo[kind]
    ids, targets, anti = batch
    tokenizer = model_zoo.tokenizer
    lens_built, log_p64 = _lens_trajectory(model, _tuned(model), ids, targets, anti, tokenizer)
    for log_probs in (log_p64, log_p64.float(), log_p64.numpy()):
        got = PredictionTrajectory.from_log_probs(
            log_probs, ids, targets=targets, anti_targets=anti, tokenizer=tokenizer
        )
        assert (got.num_layers, got.batch_shape, got.vocab_size) == (N_LAYERS, (2,), VOCAB)
        _compare_all(got, lens_built, log_p64)


@pytest.mark.parametrize("kind", MODELS)
def test_target_probability_equals_a_float64_full_softmax(model_zoo, kind, batch, tiles):
    """p(target) of the streamed pass is the textbook `stats.target_probability` of the
    materialised float64 log-softmax, at every layer and the output; NaN without target."""
    model = model_zoo[kind]
    ids, targets, _ = batch
    trajectory, log_p64 = _lens_trajectory(model, _tuned(model), ids, targets)
    got = trajectory.target_probability()
    expected = stats.target_probability(log_p64, targets[:, None, :].expand(log_p64.shape[:-1]))
    assert (got.name, got.units, got.min, got.max) == ("Target Probability", "probs", 0.0, 1.0)
    _close(got.stats, expected.numpy())
    assert np.isnan(got.stats[..., -1]).all()  # the last position has no target
    np.testing.assert_allclose(got.stats, np.exp(-trajectory.cross_entropy().stats), rtol=1e-6)


def test_from_log_probs_accepts_logits_and_an_unbatched_input(model_zoo, batch):
    model = model_zoo["bridge-llama"]
    ids, targets, anti = batch
    lens_built, log_p64 = _lens_trajectory(model, _tuned(model), ids, targets, anti)
    # Logits: each row shifted by its own constant; every row is normalised in the stream.
    shift = torch.randn(log_p64.shape[:-1], generator=torch.Generator().manual_seed(2))
    logits = (log_p64 + 30 * shift[..., None]).float()
    got = PredictionTrajectory.from_log_probs(logits, ids, targets, anti)
    _compare_all(got, lens_built, log_p64)
    single = PredictionTrajectory.from_log_probs(logits[1], ids[1], targets[1])
    _close(single.forward_kl().stats, lens_built.forward_kl().stats[1])
    assert repr(single) == (
        f"PredictionTrajectory(layers={N_LAYERS}, pos=7, source=log_probs[float32], targets=yes)"
    )


@pytest.mark.parametrize("kind", MODELS)
def test_comparisons_between_log_prob_and_lens_trajectories(model_zoo, kind, batch, tiles):
    model = model_zoo[kind]
    ids, _, _ = batch
    tokenizer = model_zoo.tokenizer
    tuned, log_q = _lens_trajectory(model, _tuned(model), ids, tokenizer=tokenizer)
    logit, log_p = _lens_trajectory(model, LogitLens.from_model(model), ids, tokenizer=tokenizer)
    from_p = PredictionTrajectory.from_log_probs(log_p.float(), ids, tokenizer=tokenizer)
    from_q = PredictionTrajectory.from_log_probs(log_q.float(), ids, tokenizer=tokenizer)
    p, q = log_p.exp(), log_q.exp()
    kl = (p * (log_p - log_q)).sum(-1)
    mix = 0.5 * (p + q)
    js = 0.5 * (p * (log_p - mix.log())).sum(-1) + 0.5 * (q * (log_q - mix.log())).sum(-1)
    tv = 0.5 * (p - q).abs().sum(-1)
    for a, b in ((logit, from_q), (from_p, tuned), (from_p, from_q)):
        _close(a.kl_divergence(b).stats, kl)
        _close(a.js_divergence(b).stats, js)
        _close(a.total_variation(b).stats, tv)
        _close(b.kl_divergence(a).stats, (q * (log_q - log_p)).sum(-1))
        labels = a.kl_divergence(b, topk=4).trajectory_labels
        reference = logit.kl_divergence(tuned, topk=4).trajectory_labels
        assert (labels.label_strings == reference.label_strings).mean() > 0.95
    _close(from_p.js_divergence(logit).stats, np.zeros((2, N_LAYERS + 1, 7)))


def test_minus_infinity_is_probability_zero(batch):
    ids, targets, _ = batch
    log_probs = torch.randn(2, N_LAYERS + 1, 7, VOCAB, generator=torch.Generator().manual_seed(4))
    log_probs[..., :10] = -math.inf  # tokens 0..9 impossible everywhere
    log_p = log_probs.double().log_softmax(-1)
    traj = PredictionTrajectory.from_log_probs(log_probs, ids, targets)
    p = log_p.exp()
    _close(traj.entropy().stats, -torch.special.xlogy(p, p).sum(-1))
    kl = torch.special.xlogy(p[:, -1:], p[:, -1:]).sum(-1) - (
        p[:, -1:] * log_p.clamp_min(-1e300)
    ).sum(-1)
    _close(traj.forward_kl().stats, kl)
    assert not np.isin(traj.top_predictions()[0].numpy(), np.arange(10)).any()


@pytest.mark.outside_annotations
def test_from_log_probs_refuses_bad_input(batch):
    ids, targets, _ = batch
    good = torch.randn(2, N_LAYERS + 1, 7, VOCAB).log_softmax(-1)
    with pytest.raises(InputError, match=r"third from last \(log_probs.movedim\(0, -3\)\)"):
        PredictionTrajectory.from_log_probs(good.movedim(-3, 0), ids)
    with pytest.raises(InputError, match=r"need \[..., layer \+ 1, pos, vocab\] = \[2, layer"):
        PredictionTrajectory.from_log_probs(good[..., :5, :], ids)
    with pytest.raises(InputError, match="at least one layer"):
        PredictionTrajectory.from_log_probs(good[:, :1], ids)
    for value, match in ((math.nan, "NaN at layer 1"), (math.inf, r"\+inf at layer 1")):
        bad = good.clone()
        bad[1, 1, 3, 5] = value
        with pytest.raises(NonFiniteActivationError, match=match):
            PredictionTrajectory.from_log_probs(bad, ids)
    bad = good.clone()
    bad[0, -1, 2] = -math.inf
    with pytest.raises(NonFiniteActivationError, match="the output row have a position"):
        PredictionTrajectory.from_log_probs(bad, ids)
    with pytest.raises(InputError, match=r"look like probabilities.*probs.log\(\)"):
        PredictionTrajectory.from_log_probs(good.exp(), ids)
    with pytest.raises(InputTypeError, match="floating point"):
        PredictionTrajectory.from_log_probs(good.long(), ids)
    with pytest.raises(InputTypeError, match="tensor or numpy array"):
        PredictionTrajectory.from_log_probs(good.tolist(), ids)
    with pytest.raises(InputError, match=f"the vocabulary has {VOCAB} tokens"):
        PredictionTrajectory.from_log_probs(good, ids + VOCAB)
    with pytest.raises(InputError, match="targets are"):
        PredictionTrajectory.from_log_probs(good, ids, targets[:1])
    with pytest.raises(InputError, match="at least one token"):
        PredictionTrajectory.from_log_probs(good[..., :0, :], ids[:, :0])


def test_log_probs_changed_in_place_are_refused(batch):
    ids, _, _ = batch
    log_probs = torch.randn(2, N_LAYERS + 1, 7, VOCAB).log_softmax(-1)
    traj = PredictionTrajectory.from_log_probs(log_probs, ids)
    part = traj.slice_sequence(slice(1, 3))
    traj.layer_log_probs(0)  # fine before the change
    log_probs[0, 0, 0, 0] += 1.0
    for stale in (traj, part):
        with pytest.raises(LensChangedError, match="from_log_probs"):
            stale.js_divergence(stale)
        with pytest.raises(LensChangedError):
            stale.layer_log_probs(0)
