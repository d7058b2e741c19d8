"""Distribution statistics obey their textbook bounds."""

from __future__ import annotations

import math

import torch

from hooklens.stats import entropy, kl_divergence, to_bits


def _random_log_probs(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(3 * torch.randn(*shape, generator=generator), dim=-1)


def test_entropy_is_between_zero_and_log_vocab():
    log_p = _random_log_probs(50, 1000)
    h = entropy(log_p)
    assert (h >= 0).all() and (h <= math.log(1000) + 1e-5).all()
    uniform = torch.full((1000,), -math.log(1000))
    assert math.isclose(entropy(uniform).item(), math.log(1000), rel_tol=1e-5)
    one_hot = torch.full((1000,), -1e9)
    one_hot[3] = 0.0
    assert entropy(torch.log_softmax(one_hot, -1)).item() == 0.0


def test_kl_is_nonnegative_and_zero_on_itself():
    log_p, log_q = _random_log_probs(50, 1000, seed=1), _random_log_probs(50, 1000, seed=2)
    assert (kl_divergence(log_p, log_q) > 0).all()
    assert torch.equal(kl_divergence(log_p, log_p), torch.zeros(50))


def test_bits_are_nats_over_ln2():
    assert math.isclose(to_bits(torch.tensor(math.log(2.0))).item(), 1.0, rel_tol=1e-6)
