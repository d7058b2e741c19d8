"""Lens readouts under TransformerLens hooks: ablations and patching change exactly
what they should, on both model classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooklens import JacobianLens, LogitLens, PredictionTrajectory, TunedLens
from hooklens.causal.effects import answer_log_prob_diff, compare
from hooklens.causal.interventions import (
    mean_ablation,
    patch,
    replace_with,
    resample_ablation,
    zero_ablation,
)
from hooklens.core import ModelAdapter
from tests.conftest import N_LAYERS, VOCAB

KINDS = ["hooked-rms-processed", "hooked-ln", "bridge-llama", "bridge-gpt2-compat"]


@pytest.fixture(params=KINDS)
def model(request, model_zoo):
    return model_zoo[request.param]


def _tokens(seed: int = 0, batch: int = 2, pos: int = 6) -> torch.Tensor:
    return torch.randint(4, 10, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _lenses(model):
    """The logit lens, a tuned lens and a J-lens, the last two with random non-identity maps."""
    generator = torch.Generator().manual_seed(3)
    tuned = TunedLens.from_model(model)
    with torch.no_grad():
        for param in tuned.parameters():
            param.normal_(0, 0.05, generator=generator)
    d_model = ModelAdapter(model).d_model
    jacobians = {
        layer: torch.eye(d_model) + 0.05 * torch.randn(d_model, d_model, generator=generator)
        for layer in range(N_LAYERS - 1)  # the last block's output is the final residual
    }
    return [LogitLens.from_model(model), tuned, JacobianLens.from_model(model, jacobians)]


def _trajectory(lens, model, tokens, **kwargs):
    return PredictionTrajectory.from_lens_and_model(lens, model, tokens, **kwargs)


def test_a_hook_that_changes_nothing_gives_zero_divergence(model):
    tokens = _tokens()
    identity = (ModelAdapter(model).activation_hook_name("mlp", 1), lambda x, hook: x)
    for lens in _lenses(model):
        comparison = compare(
            _trajectory(lens, model, tokens), _trajectory(lens, model, tokens, fwd_hooks=[identity])
        )
        for stat in (
            comparison.kl_divergence(),
            comparison.js_divergence(),
            comparison.total_variation(),
        ):
            assert np.abs(stat.stats).max() < 1e-6, stat.name


@pytest.mark.parametrize("component", ["mlp", "attn", "head"])
def test_ablation_changes_only_the_layers_after_it(model, component):
    tokens, layer = _tokens(), 1
    head = 2 if component == "head" else None
    hook = zero_ablation(model, component, layer, head=head)
    for lens in _lenses(model):
        clean = _trajectory(lens, model, tokens)
        ablated = _trajectory(lens, model, tokens, fwd_hooks=[hook])
        kl = compare(clean, ablated).kl_divergence().stats  # [batch, layer + output, pos]
        # resid_pre of layers ≤ 1 is computed before block 1's attention and MLP write.
        assert np.abs(kl[:, : layer + 1]).max() == 0.0
        # Unchanged rows are exactly 0 (the same deterministic sums), so any clear
        # excess is the ablation: one head of a tiny model moves KL by only ~1e-6.
        assert (kl[:, layer + 1 :].mean(axis=(0, 2)) > 1e-8).all()


def test_hooks_added_with_the_models_context_manager_are_read_too(model_zoo):
    model = model_zoo["bridge-llama"]
    tokens, lens = _tokens(), LogitLens.from_model(model)
    hook = zero_ablation(model, "mlp", 0)
    with model.hooks(fwd_hooks=[hook]):
        inside = _trajectory(lens, model, tokens)
    given = _trajectory(lens, model, tokens, fwd_hooks=[hook])
    plain = _trajectory(lens, model, tokens)
    assert np.abs(compare(inside, given).total_variation().stats).max() < 1e-6
    assert np.abs(compare(inside, plain).total_variation().stats).max() > 1e-3


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_patching_every_position_reproduces_the_clean_run_from_that_layer(model, layer):
    clean_tokens, corrupted_tokens = _tokens(0), _tokens(1)
    adapter = ModelAdapter(model)
    names = adapter.residual_hook_names()
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=lambda n: n in names)
    hook = patch(model, "resid_pre", layer, clean_cache)
    for lens in _lenses(model):
        clean = _trajectory(lens, model, clean_tokens)
        corrupted = _trajectory(lens, model, corrupted_tokens)
        patched = _trajectory(lens, model, corrupted_tokens, fwd_hooks=[hook])
        to_clean = compare(clean, patched).total_variation().stats
        to_corrupted = compare(corrupted, patched).total_variation().stats
        assert np.abs(to_clean[:, layer:]).max() < 1e-5
        assert np.abs(to_corrupted[:, :layer]).max(initial=0.0) == 0.0


def test_head_mean_and_resample_ablation_set_the_values_they_promise(model_zoo):
    model = model_zoo["hooked-rms-processed"]
    adapter = ModelAdapter(model)
    name = adapter.activation_hook_name("head", 1)
    tokens, reference_tokens = _tokens(0, batch=3), _tokens(5, batch=4)
    with torch.no_grad():
        _, reference = model.run_with_cache(reference_tokens, names_filter=name)
        _, plain = model.run_with_cache(tokens, names_filter=name)
    seen = {}

    def record(x, hook):
        seen["z"] = x.clone()

    for hook, check in (
        (
            mean_ablation(model, "head", 1, reference, head=2, positions=[1, 3]),
            lambda z: torch.testing.assert_close(
                z[:, [1, 3], 2], reference[name][:, :, 2].mean((0, 1)).expand(3, 2, -1)
            ),
        ),
        (
            mean_ablation(model, "head", 1, reference, head=2, per_position=True),
            lambda z: torch.testing.assert_close(
                z[:, :, 2], reference[name][:, :, 2].mean(0).expand(3, -1, -1)
            ),
        ),
        (
            resample_ablation(model, "head", 1, reference, head=0, seed=1),
            lambda z: (
                all(
                    any(torch.equal(z[b, :, 0], reference[name][s, :, 0]) for s in range(4))
                    for b in range(3)
                )
                or pytest.fail("resampled rows are not reference rows")
            ),
        ),
    ):
        with torch.no_grad():
            model.run_with_hooks(tokens, fwd_hooks=[hook, (name, record)])
        check(seen["z"])
        untouched = [h for h in range(4) if h not in (0, 2)]
        assert torch.equal(seen["z"][:, :, untouched], plain[name][:, :, untouched])


def test_bad_interventions_are_refused(model_zoo):
    model = model_zoo["hooked-rms-processed"]
    with pytest.raises(ValueError, match="needs head="):
        zero_ablation(model, "head", 0)
    with pytest.raises(IndexError, match="head 9"):
        zero_ablation(model, "head", 0, head=9)
    with pytest.raises(IndexError, match="layer 7"):
        zero_ablation(model, "mlp", 7)
    with pytest.raises(ValueError, match="component must be one of"):
        zero_ablation(model, "embed", 0)
    with pytest.raises(KeyError, match="names_filter"):
        patch(model, "mlp", 0, {})
    _, small = model.run_with_cache(_tokens(0, pos=4))
    name, fn = patch(model, "resid_pre", 1, small)
    with pytest.raises(ValueError, match="same shape"):
        model.run_with_hooks(_tokens(0, pos=6), fwd_hooks=[(name, fn)])
    assert replace_with(model, "mlp", 0, torch.ones(())) is not None


def test_answer_log_prob_diff_matches_the_trajectory(model):
    tokens = _tokens()
    targets, anti = torch.tensor([4, 5]), torch.tensor([[6, 7], [8, -1]])
    lens = _lenses(model)[1]
    values = answer_log_prob_diff(lens, model, tokens, targets, anti)
    assert values.shape == (2, N_LAYERS + 1)
    for b in range(2):
        trajectory = _trajectory(lens, model, tokens[b])
        log_probs = [trajectory.layer_log_probs(layer)[-1] for layer in range(N_LAYERS + 1)]
        ids = [i for i in anti[b].tolist() if i >= 0]
        expected = [float(lp[targets[b]] - lp[ids].logsumexp(-1)) for lp in log_probs]
        np.testing.assert_allclose(values[b], expected, atol=1e-4)
    assert VOCAB > 10


@pytest.mark.parametrize("kind", ["hooked-rms-processed", "bridge-llama"])
def test_a_jacobian_lens_reads_the_ablated_residual_through_its_matrix(model_zoo, kind):
    """Under an MLP ablation, J-lens row ℓ is W_U · norm(J_{ℓ-1} h_ℓ) of the ablated run."""
    model = model_zoo[kind]  # processed weights too: the lens is built, not loaded
    lens = _lenses(model)[2]
    tokens = _tokens(seed=4)
    hook = zero_ablation(model, "mlp", 0)
    ablated = _trajectory(lens, model, tokens, fwd_hooks=[hook])
    adapter = ModelAdapter(model)
    with torch.no_grad(), model.hooks(fwd_hooks=[hook]):
        _, cache = model.run_with_cache(tokens)
    for layer in range(1, N_LAYERS):
        hidden = cache[adapter.hook_name("resid_pre", layer)].double()
        jacobian = lens.jacobian(layer - 1).double()
        read = (hidden @ jacobian.T).float()  # J_{ℓ-1} h in float64, then the model's head
        expected = torch.log_softmax(lens.unembed(read).double(), -1)
        got = ablated.layer_log_probs(layer).double()
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    clean = _trajectory(lens, model, tokens)
    assert not torch.allclose(clean.layer_log_probs(1), ablated.layer_log_probs(1), atol=1e-3)
