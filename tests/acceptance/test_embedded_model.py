"""The embedded SmolLM2-135M loads offline in all four flavours and the lenses fit it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooklens import (
    LensMismatchError,
    LogitLens,
    ModelAdapter,
    PredictionTrajectory,
    TunedLens,
    models,
    next_token_targets,
    stats,
)

pytestmark = pytest.mark.slow

TEXT = "The capital of France is Paris. The capital of Germany is"
FLAVOURS = {
    "hooked-processed": dict(model_class="hooked", processing=True),
    "hooked-raw": dict(model_class="hooked", processing=False),
    "bridge-raw": dict(model_class="bridge", processing=False),
    "bridge-compat": dict(model_class="bridge", processing=True),
}


@pytest.fixture(scope="module")
def smollm():
    with torch.no_grad():
        loaded = {name: models.load("smollm2-135m", **kwargs) for name, kwargs in FLAVOURS.items()}
    return loaded


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_final_layer_lens_reproduces_smollm2(smollm, flavour):
    model = smollm[flavour]
    tokens = model.to_tokens(TEXT, prepend_bos=False)
    logits, cache = model.run_with_cache(tokens)
    lens = LogitLens.from_model(model)
    torch.testing.assert_close(
        lens.log_probs(cache, layer=-1), torch.log_softmax(logits, -1), atol=1e-4, rtol=0
    )
    assert model.tokenizer.decode(logits[0, -1].argmax()) == " Berlin"


def test_embedded_model_has_the_documented_shape(smollm):
    adapter = ModelAdapter(smollm["hooked-processed"])
    assert (adapter.n_layers, adapter.d_model, adapter.d_vocab) == (30, 576, 49152)
    assert adapter.model_name == "SmolLM2-135M-Instruct"


def test_processing_is_told_apart_and_equivalent_loads_agree(smollm):
    prints = {name: ModelAdapter(model).fingerprint for name, model in smollm.items()}
    assert prints["hooked-processed"].fold_ln and prints["hooked-processed"].center_unembed
    assert not prints["hooked-raw"].fold_ln and not prints["hooked-raw"].center_unembed
    # The same weights, processed the same way, hash the same in either class.
    assert prints["hooked-processed"].unembedding_hash == prints["bridge-compat"].unembedding_hash
    assert prints["hooked-raw"].unembedding_hash == prints["bridge-raw"].unembedding_hash
    assert prints["hooked-raw"].unembedding_hash != prints["hooked-processed"].unembedding_hash


def test_lens_moves_between_equivalent_loads_only(smollm, tmp_path):
    lens = TunedLens.from_model(smollm["hooked-processed"])
    lens.save(tmp_path)
    assert isinstance(TunedLens.load(tmp_path, model=smollm["bridge-compat"]), TunedLens)
    with pytest.raises(LensMismatchError, match="enable_compatibility_mode"):
        TunedLens.load(tmp_path, model=smollm["bridge-raw"])


def test_trajectory_of_smollm2_ends_at_the_models_own_prediction(smollm):
    model = smollm["hooked-processed"]
    tokens = model.to_tokens(TEXT)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    lens = LogitLens.from_model(model)
    trajectory = PredictionTrajectory.from_lens_and_cache(
        lens, tokens, cache, logits, targets=next_token_targets(tokens)
    )
    forward_kl = trajectory.forward_kl().stats[0]  # [layer, pos]
    assert np.abs(forward_kl[-1]).max() < 1e-5
    assert forward_kl[:-1].mean() > 1.0  # the logit lens is far from the output mid-model
    # References in float64, so that no CPU's float32 rounding can fail the check: the
    # output row is the model's own loss within the documented 1e-4.
    exact = torch.log_softmax(logits[0].double(), -1)
    loss = -exact[:-1].gather(-1, tokens[0, 1:, None])[:, 0]
    np.testing.assert_allclose(
        trajectory.cross_entropy().stats[0, -1, :-1], loss.numpy(), atol=1e-4, rtol=0
    )
    # A middle layer against the materialised computation in float64 on the real model.
    unembed = lens.unembed
    with torch.no_grad():
        normed = unembed.final_norm(cache["resid_pre", 15][0]).double()
        layer_logits = normed @ unembed.W_U.double()
        if unembed.b_U is not None:
            layer_logits = layer_logits + unembed.b_U.double()
        log_p = torch.log_softmax(layer_logits, -1)
    np.testing.assert_allclose(
        trajectory.entropy().stats[0, 15], stats.entropy(log_p).numpy(), atol=1e-4, rtol=0
    )
    np.testing.assert_allclose(
        forward_kl[15], stats.kl_divergence(exact, log_p).numpy(), atol=1e-4, rtol=1e-5
    )
