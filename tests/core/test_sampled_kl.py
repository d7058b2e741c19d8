"""The sampled KL reads a few vocabulary columns: exact when they are all of them, an
unbiased normaliser otherwise, and close to the exact loss and gradient with enough."""

from __future__ import annotations

import pytest
import torch

from hooklens import Unembed
from hooklens.core.sampled_kl import sample_columns, sampled_kl_to_target
from hooklens.errors import InputError

D, VOCAB, ROWS = 16, 400, 6


@pytest.fixture
def problem():
    """A lens readout near its target, as in training from a fast fit: the target is the
    readout of a perturbed hidden state, peaked like a language model's."""
    generator = torch.Generator().manual_seed(0)
    unembed = Unembed(
        torch.nn.LayerNorm(D),
        2.4 * torch.randn(D, VOCAB, generator=generator),
        0.3 * torch.randn(VOCAB, generator=generator),
    )
    hidden = torch.randn(ROWS, D, generator=generator)
    with torch.no_grad():
        target = hidden + 0.3 * torch.randn(ROWS, D, generator=generator)
        q = torch.softmax(unembed(target), -1)
    return unembed, hidden, q


def exact(unembed: Unembed, hidden: torch.Tensor, q: torch.Tensor):
    """KL(q ‖ readout) and its gradient in float64, through the full softmax."""
    x = hidden.double().requires_grad_(True)
    normed = unembed.final_norm.double()(x)
    log_p = torch.log_softmax(normed @ unembed.W_U.double() + unembed.b_U.double(), -1)
    q = q.double()
    loss = (q * (q.log() - log_p)).sum(-1).mean()
    (grad,) = torch.autograd.grad(loss, x)
    unembed.final_norm.float()
    return loss, grad


def sampled(unembed, hidden, q, **kwargs):
    x = hidden.clone().requires_grad_(True)
    loss = sampled_kl_to_target(unembed, x, sample_columns(unembed, q, **kwargs))
    (grad,) = torch.autograd.grad(loss, x)
    return loss, grad


def test_with_every_token_in_the_top_it_is_the_exact_kl(problem):
    unembed, hidden, q = problem
    expected, expected_grad = exact(unembed, hidden, q)
    loss, grad = sampled(unembed, hidden, q, top_k=VOCAB, samples=8)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


def test_the_normaliser_estimate_is_unbiased(problem):
    """E[Ẑ] = Z: the mean of exp(log Ẑ) over many draws converges to the exact Z (on
    flat logits, where the drawn tokens carry much of Z and its variance is moderate)."""
    peaked, hidden, q = problem
    unembed = Unembed(peaked.final_norm, peaked.W_U / 8, peaked.b_U)
    normed = unembed.final_norm(hidden)
    z = torch.logsumexp((normed @ unembed.W_U + unembed.b_U).double(), -1).exp()
    torch.manual_seed(0)
    estimates = []
    for _ in range(1000):
        columns = sample_columns(unembed, q, top_k=4, samples=16)
        # loss = Σ q log q − q·z + log Ẑ, so Ẑ = exp(loss_row + q·z − Σ q log q)
        with torch.no_grad():
            top = torch.einsum("rd,rkd->rk", normed, columns.top_weights)
            top = top + unembed.b_U[columns.top]
            rest = normed @ columns.sampled_weights + unembed.b_U[columns.sampled]
            both = torch.cat([top, rest + columns.log_weights], -1)
            estimates.append(torch.logsumexp(both.double(), -1).exp())
    mean = torch.stack(estimates).mean(0)
    torch.testing.assert_close(mean, z, rtol=0.05, atol=0)


def test_many_samples_come_close_to_the_exact_loss_and_gradient(problem):
    unembed, hidden, q = problem
    expected, expected_grad = exact(unembed, hidden, q)
    torch.manual_seed(1)
    loss, grad = sampled(unembed, hidden, q, top_k=16, samples=1000)
    assert abs(loss.item() - expected.item()) < 0.01 * expected.item()
    assert (grad.double() - expected_grad).norm() < 0.05 * expected_grad.norm()


def test_a_softcap_is_refused_with_what_to_do(problem):
    unembed, _, q = problem
    capped = Unembed(unembed.final_norm, unembed.W_U, logit_softcap=30.0)
    with pytest.raises(InputError, match=r"softcap.*kl_samples=0"):
        sample_columns(capped, q)
