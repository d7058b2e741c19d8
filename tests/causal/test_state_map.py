"""An affine map between two models' states, for Patchscopes across models."""

from __future__ import annotations

import pytest
import torch

from hooklens.causal import (
    AffineStateMap,
    TargetPrompt,
    fit_state_map,
    patchscope_log_probs,
)
from hooklens.errors import InputError
from tests import tiny
from tests.conftest import VOCAB


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    return tiny.word_tokenizer(tmp_path_factory.mktemp("words"), tiny.words_vocabulary())


def _batches(seed: int, n: int = 6, pos: int = 12):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (4, pos), generator=generator) for _ in range(n)]


def _layer_kl(reference: torch.Tensor, reading: torch.Tensor) -> torch.Tensor:
    """Mean KL(reference ‖ reading) per source layer (the output row left out)."""
    kl = (reference.exp() * (reference - reading)).sum(-1)
    return kl[:-1].mean(-1)


def test_a_model_mapped_onto_itself_is_the_identity():
    """Same model, same tokens, no ridge: A = I and b = 0 to float64 rounding."""
    model = tiny.make_hooked("RMS", dtype=torch.float64)
    state_map = fit_state_map(model, model, _batches(0), alpha=0.0, progress=False)
    eye = torch.eye(model.cfg.d_model, dtype=torch.float64)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(state_map.weights[layer], eye, rtol=0, atol=1e-8)
        torch.testing.assert_close(
            state_map.biases[layer], torch.zeros_like(eye[0]), rtol=0, atol=1e-8
        )
    assert "rows=264" in repr(state_map)  # 6 batches × 4 sequences × 11 positions


def test_the_fitted_map_reads_another_models_states_better_than_none():
    """Two models, one vocabulary: on held-out tokens, the source's states mapped into
    the target read closer to the target's reading of its own states than unmapped, at
    every layer (here 0.17/0.16/0.28 nats against 0.24/0.37/0.42)."""
    source = tiny.make_hooked("RMS", seed=0, dtype=torch.float64)
    target = tiny.make_hooked("RMS", seed=1, dtype=torch.float64)
    state_map = fit_state_map(source, target, _batches(0, n=20), progress=False)
    prompt = TargetPrompt(_batches(1, n=1, pos=6)[0][:1], placeholder=4)
    held_out = _batches(2, n=1, pos=10)[0][:1]
    own = patchscope_log_probs(target, held_out, prompt, progress=False)
    mapped = patchscope_log_probs(
        source, held_out, prompt, target_model=target, mapping=state_map, progress=False
    )
    unmapped = patchscope_log_probs(source, held_out, prompt, target_model=target, progress=False)
    assert (_layer_kl(own, mapped) < _layer_kl(own, unmapped)).all()


def test_a_map_to_a_narrower_model_at_one_target_layer(words):
    """Different widths (a bridge target) and one fixed target layer: A is [d_target, d_source]."""
    source = tiny.make_hooked("RMS", dtype=torch.float64, d_model=48, d_head=12)
    target = tiny.make_bridge(words).to(torch.float64)
    state_map = fit_state_map(source, target, _batches(0, n=2), target_layer=1, progress=False)
    assert state_map.weights[0].shape == (target.cfg.d_model, 48)
    scope = patchscope_log_probs(
        source, _batches(3, n=1)[0][:1], target_model=target, target_layer=1,
        mapping=state_map, progress=False,
    )  # fmt: skip
    assert scope.shape == (source.cfg.n_layers + 1, 12, VOCAB)
    assert torch.isfinite(scope).all()


def test_a_state_map_refuses_what_it_cannot_map():
    model = tiny.make_hooked("RMS", dtype=torch.float64)
    state_map = fit_state_map(model, model, _batches(0, n=1), layers=[1], progress=False)
    with pytest.raises(InputError, match="fitted for source layers"):
        state_map(torch.zeros(2, model.cfg.d_model, dtype=torch.float64), 0)
    with pytest.raises(InputError, match="leave nothing to fit"):
        fit_state_map(model, model, [torch.zeros(1, 1, dtype=torch.long)], progress=False)
    assert isinstance(state_map, AffineStateMap)
