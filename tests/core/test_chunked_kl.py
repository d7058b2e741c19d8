"""The chunked KL loss equals the direct one, value and gradient."""

from __future__ import annotations

import pytest
import torch

from hooklens import TunedLens, Unembed
from hooklens.core.chunked_kl import kl_to_target
from tests.conftest import D_MODEL


# bridge-llama has no unembedding bias: Σ q z then comes from the target projection.
@pytest.mark.parametrize(
    "kind", ["hooked-rms-processed", "hooked-ln", "bridge-gemma2", "bridge-llama"]
)
@pytest.mark.parametrize("chunk", [7, 40, 1000])
def test_chunked_kl_matches_autograd_of_the_direct_formula(model_zoo, kind, chunk):
    unembed = Unembed.from_model(model_zoo[kind])
    assert unembed.b_U is None or kind != "bridge-llama"
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, D_MODEL, generator=generator, requires_grad=True)
    target = torch.log_softmax(3 * torch.randn(6, unembed.d_vocab, generator=generator), -1)
    neg_entropy = (target.exp() * target).sum(-1)

    loss = kl_to_target(unembed, hidden, target.exp(), neg_entropy, chunk=chunk)
    (grad,) = torch.autograd.grad(loss, hidden)

    reference_hidden = hidden.detach().clone().requires_grad_(True)
    log_p = torch.log_softmax(unembed(reference_hidden), -1)
    expected = (target.exp() * (target - log_p)).sum(-1).mean()
    (expected_grad,) = torch.autograd.grad(expected, reference_hidden)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-4)


def test_gradient_reaches_only_the_translators(hooked):
    lens = TunedLens.from_model(hooked)
    hooked.requires_grad_(False)
    try:
        hidden = torch.randn(5, D_MODEL)
        target = torch.log_softmax(torch.randn(5, hooked.cfg.d_vocab), -1)
        loss = kl_to_target(
            lens.unembed,
            lens.transform_hidden(hidden, 1),
            target.exp(),
            (target.exp() * target).sum(-1),
        )
        loss.backward()
    finally:
        hooked.requires_grad_(True)
    assert lens[1].weight.grad is not None and lens[1].weight.grad.abs().sum() > 0
    assert lens[0].weight.grad is None
    assert all(p.grad is None for p in hooked.parameters())


def test_loss_without_autograd_has_the_same_value(model_zoo):
    unembed = Unembed.from_model(model_zoo["hooked-rms"])
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(3, D_MODEL, generator=generator)
    target = torch.log_softmax(torch.randn(3, unembed.d_vocab, generator=generator), -1)
    neg_entropy = (target.exp() * target).sum(-1)
    with torch.no_grad():
        value = kl_to_target(unembed, hidden, target.exp(), neg_entropy, chunk=16)
    expected = (target.exp() * (target - torch.log_softmax(unembed(hidden), -1))).sum(-1).mean()
    torch.testing.assert_close(value, expected.detach(), atol=1e-5, rtol=1e-5)
