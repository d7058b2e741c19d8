"""The patching sweep equals one patched full forward per cell, at a fraction of the cost;
bootstrap intervals cover the true mean at their stated rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooklens import JacobianLens, TunedLens
from hooklens.causal.effects import LayerEffect, answer_log_prob_diff, bootstrap_ci
from hooklens.causal.interventions import patch
from hooklens.causal.patching import patching_sweep
from hooklens.core import ModelAdapter
from tests.conftest import N_LAYERS


def _lens(model, lens_kind: str = "tuned"):
    generator = torch.Generator().manual_seed(2)
    if lens_kind == "jacobian":
        d_model = ModelAdapter(model).d_model
        return JacobianLens.from_model(
            model,
            {
                layer: torch.eye(d_model)
                + 0.05 * torch.randn(d_model, d_model, generator=generator)
                for layer in range(N_LAYERS - 1)
            },
        )
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for param in lens.parameters():
            param.normal_(0, 0.05, generator=generator)
    return lens


@pytest.mark.parametrize(
    ("kind", "lens_kind"),
    [("hooked-rms-processed", "tuned"), ("bridge-llama", "tuned"), ("bridge-llama", "jacobian")],
)
def test_sweep_cells_equal_a_patched_full_forward(model_zoo, kind, lens_kind):
    model = model_zoo[kind]
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(4, 10, (2, 5), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.tensor([11, 12])  # one token differs, as in a corrupted prompt
    targets, anti = torch.tensor([4, 5]), torch.tensor([[6, 7], [8, -1]])
    lens = _lens(model, lens_kind)
    sweep = patching_sweep(
        lens, model, clean, corrupted, targets, anti, position_batch=2, progress=False
    )
    assert sweep.values.shape == (2, N_LAYERS, 5, N_LAYERS + 1)
    adapter = ModelAdapter(model)
    names = adapter.residual_hook_names()
    np.testing.assert_allclose(
        sweep.clean, answer_log_prob_diff(lens, model, clean, targets, anti), atol=1e-4
    )
    for prompt in range(2):
        with torch.no_grad():
            _, cache = model.run_with_cache(clean[prompt : prompt + 1], names_filter=names)
        for layer in range(N_LAYERS):
            for position in range(5):
                hook = patch(model, "resid_pre", layer, cache, positions=[position])
                expected = answer_log_prob_diff(
                    lens,
                    model,
                    corrupted[prompt : prompt + 1],
                    targets[prompt : prompt + 1],
                    anti[prompt : prompt + 1],
                    fwd_hooks=[hook],
                )[0]
                got = sweep.values[prompt, layer, position]
                np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{layer, position}")
    # The read layers below the patch are the corrupted run's; patching the changed
    # token at layer 0 restores the clean answer everywhere.
    np.testing.assert_allclose(sweep.values[:, 2, :, :2], sweep.corrupted[:, None, :2].repeat(5, 1))
    np.testing.assert_allclose(sweep.values[:, 0, 1], sweep.clean, atol=1e-4)
    assert sweep.model_calls < sweep.naive_model_calls  # positions run as one batch
    if kind.startswith("hooked"):  # and blocks below the patch are skipped
        assert sweep.block_forwards < sweep.naive_block_forwards
    assert sweep.figure().data[0].z.shape == (N_LAYERS, 5)
    assert sweep.figure_by_read_layer(1).data[0].z.shape == (N_LAYERS, N_LAYERS + 1)
    assert "PatchingSweep(prompts=2" in repr(sweep)


def test_sweep_on_a_hooked_transformer_skips_the_layers_below_the_patch(model_zoo):
    model = model_zoo["hooked-rms-processed"]
    tokens = torch.randint(4, 10, (1, 4), generator=torch.Generator().manual_seed(1))
    sweep = patching_sweep(_lens(model), model, tokens, tokens.flip(-1), [4], [5], progress=False)
    # Two cached runs, then per layer ℓ the 4 positions through N_LAYERS − ℓ blocks.
    assert sweep.block_forwards == 2 * N_LAYERS + 4 * sum(N_LAYERS - i for i in range(N_LAYERS))
    assert sweep.naive_block_forwards == (2 + N_LAYERS * 4) * N_LAYERS
    assert sweep.model_calls == 2 + N_LAYERS


def test_bootstrap_interval_covers_the_true_mean_at_about_its_rate():
    rng = np.random.default_rng(0)
    trials, covered = 400, 0
    for trial in range(trials):
        sample = rng.exponential(2.0, size=60)  # skewed, true mean 2
        _, low, high = bootstrap_ci(sample, n_resamples=1000, seed=trial)
        covered += low <= 2.0 <= high
    assert 0.91 <= covered / trials <= 0.98, covered / trials


def test_layer_effect_summarises_prompts_per_layer():
    values = np.random.default_rng(1).normal([0.0, 1.0, 3.0], 0.5, size=(30, 3))
    effect = LayerEffect("Δ", values)
    assert np.allclose(effect.mean, values.mean(0))
    assert (effect.low < effect.mean).all() and (effect.mean < effect.high).all()
    assert effect.low[2] > 2.5 and effect.high[0] < 0.5
    assert len(effect.figure().data) == 2
    assert "prompts=30" in repr(effect)
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_ci([1.0])
