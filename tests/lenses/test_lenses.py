"""Lenses read the residual stream exactly as the model does at the last layer."""

from __future__ import annotations

import pytest
import torch

from hooklens import (
    LensMismatchError,
    LogitLens,
    NonFiniteActivationError,
    TunedLens,
    residual_stack,
)
from tests.conftest import D_MODEL, N_LAYERS, make_hooked


def test_final_layer_lens_reproduces_model_logits(any_model, tokens):
    logits, cache = any_model.run_with_cache(tokens)
    lens = LogitLens.from_model(any_model)
    expected = torch.log_softmax(logits, dim=-1)
    for layer in (N_LAYERS, -1):
        got = lens.log_probs(cache, layer=layer)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_fresh_tuned_lens_equals_logit_lens_at_every_layer(any_model, tokens):
    _, cache = any_model.run_with_cache(tokens)
    logit_lens = LogitLens.from_model(any_model)
    tuned_lens = TunedLens.from_model(any_model)
    rows = list(
        zip(logit_lens.iter_log_probs(cache), tuned_lens.iter_log_probs(cache), strict=True)
    )
    assert len(rows) == N_LAYERS + 1
    for (layer, expected), (tuned_layer, got) in rows:
        assert layer == tuned_layer
        assert torch.equal(got, expected), f"layer {layer} differs"


def test_trained_translator_changes_only_its_layer(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    lens = TunedLens.from_model(hooked)
    logit_lens = LogitLens.from_model(hooked)
    with torch.no_grad():
        lens[1].weight.normal_(0, 0.1)
    assert not torch.allclose(lens.log_probs(cache, 1), logit_lens.log_probs(cache, 1))
    for layer in (0, 2, N_LAYERS):
        assert torch.equal(lens.log_probs(cache, layer), logit_lens.log_probs(cache, layer))


def test_tuned_lens_without_bias_works(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    lens = TunedLens.from_model(hooked, bias=False)
    assert all(t.bias is None for t in lens.layer_translators)
    names = [name for name, _ in lens.named_parameters()]
    assert names == [f"layer_translators.{i}.weight" for i in range(N_LAYERS)]
    assert lens.log_probs(cache, 0).shape == (2, 7, hooked.cfg.d_vocab)


def test_lens_parameters_are_only_translators(hooked):
    lens = TunedLens.from_model(hooked)
    assert all(name.startswith("layer_translators.") for name, _ in lens.named_parameters())
    assert all(key.startswith("layer_translators.") for key in lens.state_dict())


def test_forward_on_residual_stack_matches_log_probs_from_cache(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    lens = LogitLens.from_model(hooked)
    stack = residual_stack(cache)
    for layer in range(N_LAYERS + 1):
        torch.testing.assert_close(
            torch.log_softmax(lens(stack[layer], layer), -1), lens.log_probs(cache, layer)
        )


def test_repr_names_model_and_layers(hooked):
    assert repr(LogitLens.from_model(hooked)) == (
        f"LogitLens(model='tiny-rms', layers={N_LAYERS}, d_model={D_MODEL})"
    )
    assert "TunedLens(model='tiny-rms', layers=3" in repr(TunedLens.from_model(hooked))


# --- bad input ----------------------------------------------------------------------------


def test_wrong_d_model_is_refused(hooked):
    lens = LogitLens.from_model(hooked)
    with pytest.raises(LensMismatchError, match=f"d_model={D_MODEL}"):
        lens(torch.randn(4, D_MODEL + 1), 0)


@pytest.mark.parametrize("layer", [N_LAYERS + 1, -(N_LAYERS + 2), 100])
def test_layer_out_of_range_is_refused(hooked, layer):
    lens = TunedLens.from_model(hooked)
    with pytest.raises(IndexError, match=f"0..{N_LAYERS}"):
        lens(torch.randn(4, D_MODEL), layer)


def test_nan_activation_raises(hooked):
    h = torch.randn(2, 5, D_MODEL)
    h[1, 3, 7] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="1 NaN or infinite"):
        LogitLens.from_model(hooked)(h, 0)


def test_empty_token_sequence_is_refused(hooked):
    with pytest.raises(ValueError, match="no positions"):
        LogitLens.from_model(hooked)(torch.randn(1, 0, D_MODEL), 0)


def test_tuned_lens_refuses_another_residual_component(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    lens = TunedLens.from_model(hooked, component="resid_pre")
    with pytest.raises(LensMismatchError, match="trained on resid_pre"):
        lens.log_probs(cache, 1, component="resid_post")


def test_unknown_component_is_refused(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    with pytest.raises(ValueError, match="resid_pre, resid_mid, resid_post"):
        LogitLens.from_model(hooked).log_probs(cache, 1, component="attn_out")


def test_cache_of_another_model_is_refused(hooked, tokens):
    other = make_hooked("RMS", n_layers=N_LAYERS + 1, seed=3)
    _, cache = other.run_with_cache(tokens)
    with pytest.raises(LensMismatchError, match="this cache comes from"):
        LogitLens.from_model(hooked).log_probs(cache, 0)


def test_deepcopy_of_a_lens_copies_translators_and_shares_the_model(hooked):
    import copy

    lens = TunedLens.from_model(hooked)
    twin = copy.deepcopy(lens)
    assert twin.adapter.model is hooked  # the 135M-parameter model is not cloned
    assert twin.unembed.W_U is lens.unembed.W_U
    with torch.no_grad():
        twin.layer_translators[0].weight.add_(1.0)
    assert not torch.equal(twin.layer_translators[0].weight, lens.layer_translators[0].weight)
