"""Residual streams come out of an ActivationCache in lens order, final residual last."""

from __future__ import annotations

import re

import pytest
import torch

from hooklens import (
    LensMismatchError,
    MissingHookError,
    ModelAdapter,
    get_residual,
    iter_residuals,
    residual_stack,
)
from tests.conftest import D_MODEL, N_LAYERS, make_bridge, make_hooked


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


# --- a cache of another model ------------------------------------------------------------


def _every_read_refuses(cache, model, match: str) -> None:
    for read in (
        lambda: residual_stack(cache, model=model),
        lambda: get_residual(cache, -1, model=model),
        lambda: get_residual(cache, N_LAYERS, model=model),
        lambda: list(iter_residuals(cache, "resid_post", model=model)),
    ):
        with pytest.raises(LensMismatchError, match=match):
            read()


def test_a_deeper_models_cache_is_refused_by_model_equals_hooked(hooked, tokens):
    """Issue 23 (7): a 4-layer cache read with a 3-layer model= once gave blocks 0-2 and
    block 2's resid_post as "the final residual", without a word."""
    deeper = make_hooked("RMS", processing=True, n_layers=N_LAYERS + 1)
    _, cache = deeper.run_with_cache(tokens)
    _every_read_refuses(cache, hooked, rf"model with {N_LAYERS + 1} blocks.*has {N_LAYERS}")
    # a plain dict knows no model: its block names tell
    _every_read_refuses(dict(cache.cache_dict), hooked, rf"blocks up to {N_LAYERS}, but")
    # and the other way round: a shallower model's cache read with the deeper model
    _, shallow = hooked.run_with_cache(tokens)
    _every_read_refuses(shallow, deeper, rf"model with {N_LAYERS} blocks.*is missing")
    with pytest.raises(MissingHookError, match=rf"deepest block is {N_LAYERS - 1}.*fewer layers"):
        residual_stack(dict(shallow.cache_dict), model=deeper)
    # its own model (given or not) reads it as before
    assert residual_stack(cache, model=deeper).shape[0] == N_LAYERS + 2
    assert torch.equal(get_residual(cache, -1), cache[f"blocks.{N_LAYERS}.hook_resid_post"])


def test_a_deeper_models_cache_is_refused_by_model_equals_bridge(model_zoo, tokens):
    bridge = model_zoo["bridge-llama"]
    deeper = make_bridge(model_zoo.tokenizer, n_layers=N_LAYERS + 1)
    _, cache = deeper.run_with_cache(tokens)
    _every_read_refuses(cache, bridge, rf"model with {N_LAYERS + 1} blocks.*has {N_LAYERS}")
    _every_read_refuses(dict(cache.cache_dict), bridge, rf"blocks up to {N_LAYERS}, but")
    _, shallow = bridge.run_with_cache(tokens)
    _every_read_refuses(shallow, deeper, rf"model with {N_LAYERS} blocks.*is missing")
    assert residual_stack(cache, model=deeper).shape[0] == N_LAYERS + 2
    final = ModelAdapter(deeper).cached_names("resid_post", N_LAYERS)
    found = next(name for name in final if name in cache.cache_dict)
    assert torch.equal(get_residual(cache, -1), cache[found])
