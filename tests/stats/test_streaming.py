"""Distribution statistics obey their definitions and bounds, streamed or not.

Hypothesis draws many distributions: spread out, near one-hot, and with -inf logits.
Streaming code sees those -inf entries as the finite floor, as trajectories feed it.
Logits are float64 here: these tests check the algebra; float32 rounding is covered
by the trajectory tests against a float32 full-vocabulary computation.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hooklens import stats
from hooklens.stats.streaming import finite_floor, pair_stats, vocab_stats

LN2 = math.log(2.0)


@st.composite
def logits(draw, rows: int | None = None, vocab: int | None = None):
    rows = rows or draw(st.integers(1, 4))
    vocab = vocab or draw(st.integers(2, 70))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 40.0]))  # 40: near one-hot
    generator = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(rows, vocab, generator=generator, dtype=torch.float64)
    if draw(st.booleans()):  # forbid some tokens, but never all of a row
        forbidden = torch.rand(rows, vocab, generator=generator) < 0.3
        forbidden[:, 0] = False
        z = z.masked_fill(forbidden, -math.inf)
    return z


def _textbook_js(log_p, log_q):
    p, q = log_p.exp(), log_q.exp()
    m = (p + q) / 2

    def kl(a, b):
        terms = torch.where(a > 0, a * torch.log(a / b), torch.zeros_like(a))
        return terms.sum(-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


@settings(max_examples=200, deadline=None)
@given(logits(), st.data())
def test_divergences_obey_their_definitions(z_p, data):
    z_q = data.draw(logits(rows=z_p.shape[0], vocab=z_p.shape[1]))
    log_p, log_q = torch.log_softmax(z_p, -1), torch.log_softmax(z_q, -1)
    kl = stats.kl_divergence(log_p, log_q)
    assert (kl >= 0).all()
    assert torch.equal(stats.kl_divergence(log_p, log_p), torch.zeros_like(log_p[:, 0]))
    js = stats.js_divergence(log_p, log_q)
    assert ((js >= 0) & (js <= LN2)).all()
    torch.testing.assert_close(js, stats.js_divergence(log_q, log_p))
    torch.testing.assert_close(js, _textbook_js(log_p, log_q))
    tv = stats.total_variation(log_p, log_q)
    torch.testing.assert_close(tv, 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1))
    assert ((tv >= 0) & (tv <= 1)).all()
    entropy = stats.entropy(log_p)
    assert ((entropy >= 0) & (entropy <= math.log(z_p.shape[1]) + 1e-9)).all()


def test_js_is_not_the_references_symmetrised_kl():
    """tuned-lens 0.2 reports ½KL(p‖q)+½KL(q‖p) as JS; on these two it differs a lot."""
    log_p = torch.log(torch.tensor([0.98, 0.01, 0.01]))
    log_q = torch.log(torch.tensor([0.01, 0.98, 0.01]))
    symmetrised = 0.5 * (stats.kl_divergence(log_p, log_q) + stats.kl_divergence(log_q, log_p))
    assert stats.js_divergence(log_p, log_q) < LN2 < symmetrised


def test_ranks_are_one_based_and_targets_can_be_absent():
    log_p = torch.log_softmax(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), -1)
    assert stats.rank(log_p, torch.tensor([0])).item() == 1
    assert stats.rank(log_p, torch.tensor([3])).item() == 4
    assert stats.rank(log_p, torch.tensor([-1])).item() == 0
    assert math.isnan(stats.cross_entropy(log_p, torch.tensor([-1])).item())


def _infinite_where_huge(kl: torch.Tensor) -> torch.Tensor:
    """Streams see forbidden tokens at the finite floor, so an infinite KL comes out huge."""
    return torch.where(kl > 1e30, math.inf, kl)


def _chunks(z: torch.Tensor, size: int):
    floored = z.clamp_min(finite_floor(z.dtype))
    for start in range(0, z.shape[-1], size):
        vocab = slice(start, min(start + size, z.shape[-1]))
        yield vocab, floored[:, vocab].clone()


@settings(max_examples=200, deadline=None)
@given(logits(), st.data())
def test_streamed_statistics_equal_full_vocabulary_ones(z, data):
    rows, vocab = z.shape
    size = data.draw(st.integers(1, vocab + 3))
    k = data.draw(st.integers(1, 5))
    targets = torch.tensor(
        data.draw(st.lists(st.integers(-1, vocab - 1), min_size=rows, max_size=rows))
    )
    z_ref = data.draw(logits(rows=rows, vocab=vocab))
    log_p, log_ref = torch.log_softmax(z, -1), torch.log_softmax(z_ref, -1)
    floored = z.clamp_min(finite_floor(z.dtype))
    target_logits = floored.gather(-1, targets.clamp_min(0)[:, None])[:, 0]

    def reference(vocab: slice) -> torch.Tensor:
        return log_ref.clamp_min(finite_floor(z.dtype))[:, vocab]

    streamed = vocab_stats(
        _chunks(z, size), k=k, target_logits=target_logits, targets=targets, reference=reference
    )
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(streamed.logsumexp, torch.logsumexp(z, -1), **close)
    torch.testing.assert_close(streamed.entropy, stats.entropy(log_p), **close)
    torch.testing.assert_close(
        _infinite_where_huge(streamed.reference_kl), stats.kl_divergence(log_ref, log_p), **close
    )
    torch.testing.assert_close(streamed.target_rank, stats.rank(log_p, targets))
    kk = min(k, vocab)
    expected_top = log_p.topk(kk, -1).values.clamp_min(-1e30)
    torch.testing.assert_close(
        streamed.topk_log_probs[:, :kk].clamp_min(-1e30), expected_top, **close
    )
    torch.testing.assert_close(
        streamed.topk_log_probs[:, 0].exp(), stats.max_probability(log_p), **close
    )

    lse_p, lse_q = torch.logsumexp(z, -1), torch.logsumexp(z_ref, -1)
    pairs = (
        (vocab_slice, a, b)
        for (vocab_slice, a), (_, b) in zip(_chunks(z, size), _chunks(z_ref, size), strict=True)
    )
    divergences = pair_stats(pairs, lse_p, lse_q)
    torch.testing.assert_close(
        _infinite_where_huge(divergences.kl), stats.kl_divergence(log_p, log_ref), **close
    )
    torch.testing.assert_close(divergences.js, stats.js_divergence(log_p, log_ref), **close)
    torch.testing.assert_close(divergences.tv, stats.total_variation(log_p, log_ref), **close)


def test_bits_are_nats_over_ln2():
    assert math.isclose(stats.to_bits(torch.tensor(LN2)).item(), 1.0, rel_tol=1e-12)
