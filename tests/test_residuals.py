"""Residual streams come out of an ActivationCache in lens order, final residual last."""

from __future__ import annotations

import re

import pytest
import torch

from hooklens import MissingHookError, ModelAdapter, get_residual, residual_stack
from tests.conftest import D_MODEL, N_LAYERS


@pytest.mark.parametrize("component", ["resid_pre", "resid_mid", "resid_post"])
def test_stack_holds_every_block_then_the_final_residual(any_model, tokens, component):
    _, cache = any_model.run_with_cache(tokens)
    stack = residual_stack(cache, component)
    assert stack.shape == (N_LAYERS + 1, *tokens.shape, D_MODEL)
    for layer in range(N_LAYERS):
        assert torch.equal(stack[layer], cache[f"blocks.{layer}.hook_{component}"])
    assert torch.equal(stack[N_LAYERS], cache[f"blocks.{N_LAYERS - 1}.hook_resid_post"])


def test_cache_without_batch_dim_keeps_its_shape(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens[:1], remove_batch_dim=True)
    assert residual_stack(cache).shape == (N_LAYERS + 1, tokens.shape[1], D_MODEL)


def test_missing_hook_error_names_the_hook(any_model, tokens):
    adapter = ModelAdapter(any_model)
    kept = adapter.residual_hook_names("resid_pre")
    _, cache = any_model.run_with_cache(tokens, names_filter=lambda name: name in kept)
    assert residual_stack(cache, "resid_pre").shape[0] == N_LAYERS + 1
    with pytest.raises(MissingHookError, match=r"'blocks\.0\.hook_resid_mid'") as info:
        residual_stack(cache, "resid_mid")
    assert "names_filter" in str(info.value)


def test_hook_prefixed_component_names_are_accepted(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    assert torch.equal(get_residual(cache, 1, "hook_resid_pre"), get_residual(cache, 1))


def test_a_bridge_cache_under_canonical_names_is_read_like_the_aliases(model_zoo, tokens):
    """TransformerBridge calls block inputs/outputs `blocks.{i}.hook_in` / `hook_out`
    (TransformerLens 3.9 and 4.x); a cache that kept only those reads the same."""
    from hooklens import LogitLens

    bridge = model_zoo["bridge-llama"]
    canonical = re.compile(r"blocks\.\d+\.hook_(in|out)")
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: bool(canonical.fullmatch(n)))
    assert not any("resid" in name for name in cache.cache_dict)
    _, full = bridge.run_with_cache(tokens)
    lens = LogitLens.from_model(bridge)
    for component in ("resid_pre", "resid_post"):
        expected = residual_stack(full, component)
        torch.testing.assert_close(residual_stack(cache, component), expected, atol=0, rtol=0)
    torch.testing.assert_close(lens.log_probs(cache, -1), lens.log_probs(full, -1), atol=0, rtol=0)
    with pytest.raises(MissingHookError, match="resid_mid"):
        residual_stack(cache, "resid_mid")
