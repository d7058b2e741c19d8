"""hooklens creates every tensor on the device of the data it meets: the core paths run
under `device_checked` (tests/devices/harness.py), which fails where a tensor made on
the default device meets the data, as it would on a GPU."""

from __future__ import annotations

import warnings

import pytest
import torch

from hooklens import JacobianLens, LogitLens, LogitStats, PredictionTrajectory, TunedLens
from hooklens.causal import extract_causal_bases, patching_sweep, zero_ablation
from hooklens.causal.effects import compare
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.loop import TrainConfig, train_lens
from tests.conftest import D_MODEL, N_LAYERS, VOCAB
from tests.devices.harness import device_checked


@pytest.fixture(scope="module")
def model(model_zoo):
    return model_zoo["bridge-llama"]  # raw weights: every lens, the J-lens fit included


@pytest.fixture(scope="module")
def hooked(model_zoo):
    return model_zoo["hooked-rms-processed"]


def _tokens(batch: int = 2, pos: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (batch, pos), generator=generator)


def _lenses(model) -> list:
    """The logit lens, a random tuned lens and a random J-lens of `model`: the same
    draws (made on the CPU) on whichever device and in whichever dtype `model` is."""
    generator = torch.Generator().manual_seed(0)
    tuned = TunedLens.from_model(model)
    with torch.no_grad():
        for param in tuned.parameters():
            param.copy_(torch.empty(param.shape).normal_(0, 0.05, generator=generator))
    like = {"device": model.W_U.device, "dtype": model.W_U.dtype}
    jacobians = {
        layer: (torch.eye(D_MODEL) + 0.05 * torch.randn(D_MODEL, D_MODEL, generator=generator))
        for layer in range(N_LAYERS - 2)  # one layer left as the identity (logit lens)
    }
    jacobians = {layer: matrix.to(**like) for layer, matrix in jacobians.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no matrix for layers [...]"
        jlens = JacobianLens.from_model(model, jacobians)
    return [LogitLens.from_model(model), tuned, jlens]


# --- the harness itself -----------------------------------------------------------------


def _as_hooklens(source: str):
    """A function compiled as if it were in the hooklens package."""
    namespace = {"__name__": "hooklens._device_harness_probe", "torch": torch}
    exec(source, namespace)
    return namespace["probe"]


def test_the_harness_flags_a_default_device_tensor_that_meets_the_data():
    probe = _as_hooklens("def probe(x):\n    return x + torch.zeros(x.shape[-1])\n")
    expected = r"hooklens._device_harness_probe:2 \(probe\)"
    with pytest.raises(AssertionError, match=expected), device_checked():
        probe(torch.ones(2, 3))


@pytest.mark.parametrize(
    "body",
    [
        "x + torch.zeros(x.shape[-1], device=x.device)",  # the data's device
        "x * torch.tensor(2.0)",  # a 0-d tensor goes anywhere
        "x[torch.arange(1)]",  # an index is moved by torch
        "x + torch.ones(3).to(x.device)",  # moved before it meets the data
        "torch.zeros(3).sum() + 1",  # never meets the data
    ],
)
def test_the_harness_allows_what_runs_on_any_device(body):
    probe = _as_hooklens(f"def probe(x):\n    return {body}\n")
    with device_checked():
        probe(torch.ones(2, 3))


def test_the_harness_follows_a_default_device_tensor_through_operations():
    probe = _as_hooklens(
        "def probe(x):\n    index = torch.arange(3) * 2\n    return x + index.float()\n"
    )
    with pytest.raises(AssertionError, match=r"_device_harness_probe:2"), device_checked():
        probe(torch.ones(2, 3))


def test_tensors_made_outside_hooklens_are_the_data():
    with device_checked():
        torch.ones(3) + torch.zeros(3)


# --- the core paths -----------------------------------------------------------------------


def test_trajectories_and_their_comparisons(model):
    tokens = _tokens()
    targets, anti = tokens.roll(-1, dims=-1), tokens.flip(-1)
    mask = torch.ones_like(tokens)
    mask[1, :2] = 0  # a left-padded row
    hook = zero_ablation(model, "mlp", 1)
    with device_checked():
        for lens in _lenses(model):
            clean = PredictionTrajectory.from_lens_and_model(
                lens, model, tokens, targets=targets, anti_targets=anti, attention_mask=mask
            )
            ablated = PredictionTrajectory.from_lens_and_model(
                lens, model, tokens, targets=targets, fwd_hooks=[hook], attention_mask=mask
            )
            clean.entropy(), clean.forward_kl(), clean.rank(), clean.log_prob_diff()
            clean.largest_prob_labels(), clean.slice_sequence(slice(1, 4))
            compare(clean, ablated).kl_divergence()
            compare(clean, ablated).js_divergence()


def test_lens_log_probs_and_logit_stats(model):
    _, cache = model.run_with_cache(_tokens())
    with device_checked():
        for lens in _lenses(model):
            stats = LogitStats()
            for layer in range(N_LAYERS + 1):
                log_probs = lens.log_probs(cache, layer)
                stats.update(log_probs.reshape(-1, VOCAB))
            stats.marginal_probs, stats.mle(max_iter=3)
            stats.all_reduce_()


def test_a_training_step_and_the_fast_fit(hooked):
    batches = [_tokens(2, 8, seed) for seed in range(2)]
    with device_checked():
        lens = TunedLens.from_model(hooked)
        train_lens(hooked, lens, batches, TrainConfig(steps=1, lr=1e-3), progress=False)
        fit_tuned_lens(hooked, batches, progress=False)


def test_a_jacobian_lens_fit_step(model, tmp_path):
    prompts = ["w5 w6 w7 w8 w9", "w10 w11 w12 w13"]
    with device_checked():
        lens = JacobianLens.fit(
            model, prompts, max_seq_len=6, skip_first_positions=1, progress=False,
            checkpoint=tmp_path / "fit.pt",
        )  # fmt: skip
        hidden = model.run_with_cache(_tokens())[1]["blocks.0.hook_resid_post"]
        hidden @ lens.jacobian(N_LAYERS - 1).T  # the identity: no fitted matrix there
        PredictionTrajectory.from_lens_and_model(lens, model, _tokens())


def test_generation(model):
    generator = torch.Generator().manual_seed(0)
    with device_checked():
        for lens in _lenses(model):
            lens.generate(model, 1, ["w5 w6 w7", "w8 w9"], max_new_tokens=3, generator=generator)


def test_patching(model):
    clean = _tokens(2, 5)
    corrupted = clean.flip(-1)
    with device_checked():
        for lens in _lenses(model)[:2]:
            patching_sweep(
                lens, model, clean, corrupted, torch.tensor([4, 5]), [6, 7], progress=False
            )


def test_causal_bases(model):
    tokens = _tokens()
    _, cache = model.run_with_cache(tokens)
    hiddens = [cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(N_LAYERS)] + [
        cache[f"blocks.{N_LAYERS - 1}.hook_resid_post"]
    ]
    with device_checked():
        for mode in ("mean", "zero"):
            lens = _lenses(model)[1]
            list(extract_causal_bases(lens, hiddens, 2, layers=[1], mode=mode, max_iter=3,
                                      progress=False))  # fmt: skip


def test_patchscopes(model):
    from hooklens.causal import TargetPrompt, patchscope, patchscope_generate

    tokens = _tokens(1, 7)
    with device_checked():
        patchscope(model, tokens, TargetPrompt(tokens[:, :4], 2), progress=False)
        patchscope_generate(
            model, tokens, TargetPrompt(tokens[:, :4], 2), layers=[1], max_new_tokens=2
        )


def test_held_out_evaluation(model):
    from hooklens.evaluation import LayerMarginals, evaluate_lenses

    batches = [_tokens(2, 6, seed) for seed in range(2)]
    lenses = dict(zip(["logit", "tuned", "jacobian"], _lenses(model), strict=True))
    with device_checked():
        evaluate_lenses(model, lenses, batches, marginals=LayerMarginals())


def test_interventions_and_faithfulness(model):
    from hooklens.causal import (
        lens_faithfulness,
        mean_ablation,
        patch,
        replace_with,
        resample_ablation,
    )

    tokens, other = _tokens(), _tokens(seed=1)
    _, source = model.run_with_cache(other)
    with device_checked():
        hooks = [
            mean_ablation(model, "mlp", 0, source, positions=[1, 2]),
            patch(model, "attn", 1, source, positions=[0]),
            resample_ablation(model, "resid_pre", 1, source, positions=[3]),
            replace_with(model, "head", 1, torch.zeros(()), head=1, positions=[2]),
        ]
        PredictionTrajectory.from_lens_and_model(
            LogitLens.from_model(model), model, tokens, fwd_hooks=hooks
        )
        lens_faithfulness(model, _lenses(model)[1], tokens, [1], k=2, max_iter=3, progress=False)
