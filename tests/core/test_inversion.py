"""Unembed.invert finds a hidden state whose logits match a target distribution."""

from __future__ import annotations

import enum

import pytest
import torch

from hooklens import Unembed
from hooklens.core.inversion import InversionOutput


def kl(target_logits, logits):
    log_p, log_q = target_logits.log_softmax(-1), logits.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@pytest.fixture
def real_states(hooked, tokens):
    """Residuals of a real run: the lens output of these is reachable exactly."""
    _, cache = hooked.run_with_cache(tokens)
    return Unembed.from_model(hooked), cache["blocks.2.hook_resid_post"][0]  # [pos, d_model]


@pytest.mark.parametrize("optimizer", ["lbfgs", "LBFGS", "sgd"])
def test_inverting_a_real_hidden_states_logits_reaches_tol(real_states, optimizer):
    unembed, h = real_states
    target = unembed(h).detach()
    start = torch.randn_like(h) * h.norm(dim=-1, keepdim=True) / h.shape[-1] ** 0.5
    assert kl(target, unembed(start)).mean() > 0.05  # a start far from the answer
    out = unembed.invert(target, h0=start, optimizer=optimizer, step_size=1.0, max_iter=2000)
    assert isinstance(out, InversionOutput) and out.preimage.shape == h.shape
    assert out.kl < 1e-3 and out.nfev <= 2000
    torch.testing.assert_close(kl(target, unembed(out.preimage)).mean(), out.kl, atol=1e-5, rtol=0)


def test_optimizer_may_be_an_enum_member_and_is_checked(real_states):
    class Optim(enum.Enum):  # tuned-lens compared such an Enum with a string and broke
        LBFGS = "lbfgs"

    unembed, h = real_states
    assert unembed.invert(unembed(h[:1]).detach(), optimizer=Optim.LBFGS).kl < 1e-3
    with pytest.raises(ValueError, match=r"one of \('lbfgs', 'sgd'\), got 'adam'"):
        unembed.invert(unembed(h[:1]).detach(), optimizer="adam")


def test_bad_input_is_refused(real_states):
    unembed, h = real_states
    target = unembed(h).detach()
    with pytest.raises(ValueError, match="h0 must have shape"):
        unembed.invert(target, h0=h[:1])  # would broadcast silently
    with pytest.raises(ValueError, match="needs a prior"):
        unembed.invert(target, prior_weight=1.0)
    with pytest.raises(ValueError, match="end in the vocabulary"):
        unembed.invert(target[:, :-1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        unembed.invert(torch.full_like(target, float("nan")))


def test_the_models_weights_collect_no_gradient(real_states, hooked):
    unembed, h = real_states
    unembed.invert(unembed(h).detach(), h0=torch.randn_like(h), max_iter=20)
    assert all(p.grad is None for p in hooked.parameters())


def test_prior_term_is_added_and_pulls_toward_the_prior(real_states):
    unembed, h = real_states
    target = unembed(h[:1]).detach()
    elsewhere = unembed.normalize(h[3:4]).detach()  # the prior sits on another state
    prior = torch.distributions.Independent(torch.distributions.Normal(elsewhere, 1.0), 1)
    free = unembed.invert(target, max_iter=200)
    pulled = unembed.invert(target, prior=prior, prior_weight=10.0, max_iter=200)
    nll = -prior.log_prob(unembed.normalize(pulled.preimage)).mean()
    torch.testing.assert_close(pulled.loss, pulled.kl + 10.0 * nll, atol=1e-4, rtol=1e-5)
    distance = [(unembed.normalize(o.preimage) - elsewhere).norm() for o in (free, pulled)]
    assert distance[1] < 0.5 * distance[0]
    assert pulled.kl > free.kl  # the prior costs fit


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lbfgs", "sgd"])
def test_inversion_on_the_embedded_model(optimizer):
    """SmolLM2 without weight processing: its RMSNorm gain stays in the norm, so the
    least-squares start is not exact (KL ~60 nats) and the optimiser does the work."""
    from hooklens import models

    model = models.load("smollm2-135m", processing=False)
    _, cache = model.run_with_cache(model.to_tokens("The Eiffel Tower is in the city of Paris"))
    unembed = Unembed.from_model(model)
    h = cache["blocks.20.hook_resid_post"][0, -3:]
    target = unembed(h).detach()
    if optimizer == "lbfgs":
        out = unembed.invert(target)  # from the least-squares start
    else:  # plain gradient steps need a start nearer the answer: KL ~1.4 nats here
        noise = torch.randn(h.shape, generator=torch.Generator().manual_seed(0))
        start = h + h.norm(dim=-1, keepdim=True) / 24 * noise
        assert kl(target, unembed(start)).mean() > 0.5
        out = unembed.invert(target, h0=start, optimizer="sgd", step_size=100.0)
    print(f"{optimizer}: KL {out.kl:.1e} nats after {out.nfev} evaluations")
    assert out.kl < 1e-3 and out.nfev <= 1000
