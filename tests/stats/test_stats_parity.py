"""`hooklens.stats` reads logits and log-probabilities alike; `js_distance` is a metric;
`LogitStats` estimates the marginal distribution and its Dirichlet, over ranks too.

References are numpy computations from the probabilities (in extended precision, at
least float64), written here independently of the package.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from hooklens import stats
from hooklens.errors import InputError, InputTypeError
from hooklens.stats import LogitStats

LN2 = math.log(2.0)


def _logits(generator: torch.Generator, rows: int, vocab: int, scale: float, forbid: bool):
    z = scale * torch.randn(rows, vocab, generator=generator, dtype=torch.float64)
    z = z + 10 * torch.randn(rows, 1, generator=generator, dtype=torch.float64)  # any offset
    if forbid:  # some tokens impossible, never all of a row
        forbidden = torch.rand(rows, vocab, generator=generator) < 0.3
        forbidden[:, 0] = False
        z = z.masked_fill(forbidden, -math.inf)
    return z


def _probs(z: torch.Tensor) -> np.ndarray:
    """Softmax in numpy's extended precision: the textbook formulas below cancel
    digits for near-identical distributions, and float64 would lose them."""
    z = z.numpy().astype(np.longdouble)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _plogp_over(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p / q), 0.0).sum(-1)


def _reference_js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = (p + q) / 2
    return 0.5 * _plogp_over(p, m) + 0.5 * _plogp_over(q, m)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    vocab=st.integers(2, 60),
    scale=st.sampled_from([0.1, 1.0, 3.0, 40.0]),
    forbid=st.booleans(),
)
def test_every_statistic_gives_the_same_answer_on_logits_and_on_log_probs(
    seed, vocab, scale, forbid
):
    generator = torch.Generator().manual_seed(seed)
    z_p, z_q = (_logits(generator, 4, vocab, scale, forbid) for _ in range(2))
    lp_p, lp_q = torch.log_softmax(z_p, -1), torch.log_softmax(z_q, -1)
    p, q = _probs(z_p), _probs(z_q)
    targets = torch.randint(-1, vocab, (4,), generator=generator)
    anti = torch.randint(0, vocab, (4,), generator=generator)
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    picked = np.take_along_axis(log_p, targets.clamp_min(0).numpy()[:, None], -1)[:, 0]
    expected = {
        "kl_divergence": _plogp_over(p, q),
        "js_divergence": _reference_js(p, q),
        "js_distance": np.sqrt(_reference_js(p, q)),
        "total_variation": 0.5 * np.abs(p - q).sum(-1),
    }
    for name, reference in expected.items():
        function = getattr(stats, name)
        # √ magnifies the rounding of a divergence near 0 (1e-20 becomes 1e-10)
        close = dict(rtol=1e-9, atol=1e-8 if name == "js_distance" else 1e-12, err_msg=name)
        on_logits, on_log_probs = function(z_p, z_q), function(lp_p, lp_q)
        np.testing.assert_allclose(on_logits, on_log_probs, **close)
        np.testing.assert_allclose(on_logits, reference, **close)
        np.testing.assert_allclose(function(z_p, lp_q), reference, **close)
    single = {
        "entropy": -_plogp_over(p, np.ones_like(p)),
        "max_probability": p.max(-1),
    }
    for name, reference in single.items():
        function = getattr(stats, name)
        np.testing.assert_allclose(function(z_p), reference, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(function(lp_p), reference, rtol=1e-9, atol=1e-12)
    cross_entropy = np.where(targets.numpy() >= 0, -picked, np.nan)
    np.testing.assert_allclose(
        stats.cross_entropy(z_p, targets), cross_entropy, rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        stats.cross_entropy(lp_p, targets), cross_entropy, rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(stats.rank(z_p, targets), stats.rank(lp_p, targets))
    torch.testing.assert_close(
        stats.log_prob_diff(z_p, targets, anti),
        stats.log_prob_diff(lp_p, targets, anti),
        equal_nan=True,
    )


def test_js_of_two_raw_logit_vectors_is_their_true_jsd_not_ln2():
    """Raw logits read as log-probs once gave ln 2 here (no overlap of 'probabilities')."""
    torch.manual_seed(0)
    z_p, z_q = 3 * torch.randn(10), 3 * torch.randn(10)
    expected = _reference_js(_probs(z_p.double()), _probs(z_q.double()))
    assert expected == pytest.approx(0.5095, abs=5e-5)
    assert stats.js_divergence(z_p, z_q).item() == pytest.approx(expected, rel=1e-5)
    assert stats.js_divergence(z_p.double(), z_q.double()).item() == pytest.approx(
        expected, rel=1e-12
    )
    assert stats.js_divergence(z_p, z_q).item() < LN2 - 0.1


@pytest.mark.parametrize("vocab", [2, 3, 10, 200])
def test_js_distance_is_a_metric(vocab):
    """Triangle inequality, symmetry and identity on many random triples (with near
    one-hot and impossible tokens): √JS is a metric, JS itself is not."""
    generator = torch.Generator().manual_seed(vocab)
    triples = [
        torch.cat([_logits(generator, 500, vocab, scale, forbid) for scale in (0.3, 3.0, 30.0)])
        for forbid in (False, True, False)
    ]
    p, q, r = triples
    d_pq, d_qr, d_pr = stats.js_distance(p, q), stats.js_distance(q, r), stats.js_distance(p, r)
    assert (d_pr <= d_pq + d_qr + 1e-12).all()
    torch.testing.assert_close(d_pq, stats.js_distance(q, p), rtol=1e-12, atol=1e-15)
    assert torch.equal(stats.js_distance(p, p), torch.zeros(len(p), dtype=torch.float64))
    assert stats.js_distance(p, p + 5.0).max() < 1e-7  # the same distribution, rounded apart
    differs = torch.from_numpy(np.abs(_probs(p) - _probs(q)).max(-1) > 1e-3)
    assert (d_pq[differs] > 0).all()
    assert (d_pq <= math.sqrt(LN2) + 1e-12).all()


def test_js_divergence_itself_breaks_the_triangle_inequality():
    """Why the metric is √JS: one-hot p, r and their midpoint q."""
    p, q, r = (torch.tensor([[a, b]]) for a, b in ((0.0, -math.inf), (0.0, 0.0), (-math.inf, 0.0)))
    js = stats.js_divergence
    assert js(p, r) > js(p, q) + js(q, r)
    assert stats.js_distance(p, r) <= stats.js_distance(p, q) + stats.js_distance(q, r)


# --- LogitStats -------------------------------------------------------------------------------

ALPHA = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 1.5], dtype=torch.float64)


def _dirichlet_log_probs(n: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.distributions.Dirichlet(ALPHA).sample((n,)).log()


def test_the_marginal_converges_to_the_true_one_as_rows_add_up():
    true_marginal = ALPHA / ALPHA.sum()
    estimate = LogitStats()
    errors = {}
    log_p = _dirichlet_log_probs(20_000, seed=0)
    for start in range(0, 20_000, 100):
        offsets = torch.randn(100, 1, dtype=torch.float64)  # logits: log p + any constant
        estimate.update((log_p[start : start + 100] + offsets).float())
        if estimate.n in (100, 1_000, 20_000):
            errors[estimate.n] = (estimate.marginal_probs - true_marginal).abs().max().item()
    assert estimate.marginal_probs.dtype == torch.float64
    assert estimate.marginal_probs.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert errors[20_000] < min(0.005, errors[100] / 3)
    # within 4 standard errors of the largest per-token spread, Var p_k = m(1-m)/(Σα+1)
    spread = (true_marginal * (1 - true_marginal) / (ALPHA.sum() + 1)).sqrt().max().item()
    assert all(error < 4 * spread / math.sqrt(n) for n, error in errors.items())
    assert estimate.n == 20_000
    # only [vocab] float64 sums are kept, however many rows were added
    kept = [v for v in vars(estimate).values() if isinstance(v, torch.Tensor)]
    assert kept and all(t.shape == (len(ALPHA),) and t.dtype == torch.float64 for t in kept)


def test_mle_recovers_the_dirichlet_concentration():
    estimate = LogitStats()
    log_p = _dirichlet_log_probs(20_000, seed=1)
    for batch in log_p.split(5_000):
        estimate.update(batch.reshape(50, 100, -1), assume_normalized=True)
    fitted = estimate.mle()
    assert isinstance(fitted, torch.distributions.Dirichlet)
    np.testing.assert_allclose(fitted.concentration, ALPHA, rtol=0.05)
    # it is the maximum of the mean log-likelihood: nudging α lowers it
    best = fitted.log_prob(log_p.exp()).mean()
    for factor in (0.9, 1.1):
        nudged = torch.distributions.Dirichlet(fitted.concentration * factor)
        assert nudged.log_prob(log_p.exp()).mean() < best


def test_updates_add_up_whatever_the_batching_mask_or_chunking():
    generator = torch.Generator().manual_seed(2)
    logits = 3 * torch.randn(2, 7, 11, generator=generator)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False  # padding
    padded = LogitStats()
    padded.update(logits, mask=mask)
    alone = LogitStats()
    alone.update(logits[0], chunk_rows=3)
    alone.update(logits[1, :4])
    assert padded.n == alone.n == 11
    torch.testing.assert_close(padded.marginal_probs, alone.marginal_probs, rtol=1e-12, atol=0)
    torch.testing.assert_close(padded.sufficient_stats, alone.sufficient_stats, rtol=1e-12, atol=0)
    expected = torch.softmax(logits[mask].double(), -1).mean(0)
    torch.testing.assert_close(padded.marginal_probs, expected, rtol=1e-6, atol=1e-9)
    none_kept = LogitStats()
    none_kept.update(logits, mask=torch.zeros(2, 7, dtype=torch.bool))
    assert none_kept.n == 0


@pytest.mark.outside_annotations
def test_bad_updates_are_refused_and_leave_the_statistics_unchanged():
    estimate = LogitStats()
    with pytest.raises(InputError, match="call update"):
        estimate.mle()
    with pytest.raises(InputError, match="empty batch"):
        estimate.update(torch.zeros(0, 5))
    with pytest.raises(InputTypeError, match="float tensor"):
        estimate.update(torch.zeros(2, 5, dtype=torch.long))
    estimate.update(torch.randn(3, 5))
    before = estimate.marginal_probs.clone()
    with pytest.raises(InputError, match="vocabulary of 5 tokens, this batch has 6"):
        estimate.update(torch.randn(3, 6))
    nan = torch.randn(4, 5)
    nan[2, 1] = math.nan
    with pytest.raises(InputError, match="NaN"):
        estimate.update(nan, chunk_rows=1)
    with pytest.raises(InputError, match="mask of shape"):
        estimate.update(torch.randn(2, 3, 5), mask=torch.ones(3, 2, dtype=torch.bool))
    assert estimate.n == 3 and torch.equal(estimate.marginal_probs, before)
    estimate.update(torch.tensor([[0.0, -math.inf, 0.0, 0.0, 0.0]]))  # token 1 impossible
    with pytest.raises(InputError, match=r"tokens \[1\] have probability 0"):
        estimate.mle()


def test_all_reduce_without_a_process_group_changes_nothing():
    estimate = LogitStats()
    estimate.update(torch.randn(4, 5))
    before = estimate.marginal_probs.clone(), estimate.n
    estimate.all_reduce_()
    assert torch.equal(estimate.marginal_probs, before[0]) and estimate.n == before[1]


def _rows(rank: int) -> torch.Tensor:
    return 2 * torch.randn(3 + 4 * rank, 9, generator=torch.Generator().manual_seed(rank))


def _reduce_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shared, only_rank0, mismatched = LogitStats(), LogitStats(), LogitStats()
        shared.update(_rows(rank))
        shared.all_reduce_()
        if rank == 0:
            only_rank0.update(_rows(0))
        only_rank0.all_reduce_()
        mismatched.update(torch.randn(2, 9 + rank))
        try:
            mismatched.all_reduce_()
            refused = 0.0
        except InputError:
            refused = 1.0
        save_file(
            {
                "marginal": shared.marginal_probs,
                "sufficient": shared.sufficient_stats,
                "n": torch.tensor([shared.n, only_rank0.n]),
                "only_rank0": only_rank0.marginal_probs,
                "refused": torch.tensor([refused]),
            },
            f"{out}/rank{rank}.safetensors",
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_the_statistics_of_two_gloo_ranks(tmp_path):
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = LogitStats()
    single.update(torch.cat([_rows(0), _rows(1)]))
    rank0 = LogitStats()
    rank0.update(_rows(0))
    for rank in range(2):
        result = load_file(tmp_path / f"rank{rank}.safetensors")
        assert result["n"].tolist() == [single.n, rank0.n]
        torch.testing.assert_close(result["marginal"], single.marginal_probs, rtol=1e-12, atol=0)
        torch.testing.assert_close(
            result["sufficient"], single.sufficient_stats, rtol=1e-12, atol=0
        )
        torch.testing.assert_close(result["only_rank0"], rank0.marginal_probs, rtol=1e-12, atol=0)
        assert result["refused"].item() == 1.0  # every rank refuses mismatched vocabularies
