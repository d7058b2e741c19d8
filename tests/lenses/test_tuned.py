"""Low-rank tuned lenses (`TunedLens.from_model(model, rank=r)`): built, trained, saved,
loaded, checked against the model, and read like every tuned lens."""

from __future__ import annotations

import json
import re

import pytest
import torch

from hooklens import LensMismatchError, LogitLens, PredictionTrajectory, TunedLens
from hooklens.artifacts import write_lens_dir
from hooklens.causal.interventions import zero_ablation
from hooklens.errors import InputError, LensFileError
from hooklens.report import trajectory_report
from hooklens.training.loop import TrainConfig, batch_loss, train_lens
from tests.conftest import N_LAYERS, VOCAB, make_hooked


def _trained(model, rank=4, seed: int = 0, **kwargs) -> TunedLens:
    lens = TunedLens.from_model(model, rank=rank, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lens.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return lens


def _all_log_probs(lens, cache):
    return torch.stack([log_probs for _, log_probs in lens.iter_log_probs(cache)])


def test_a_fresh_low_rank_lens_is_the_logit_lens(hooked, tokens):
    _, cache = hooked.run_with_cache(tokens)
    lens = TunedLens.from_model(hooked, rank=3)
    assert torch.equal(
        _all_log_probs(lens, cache), _all_log_probs(LogitLens.from_model(hooked), cache)
    )
    d = hooked.cfg.d_model
    assert sum(p.numel() for p in lens.parameters()) == N_LAYERS * (2 * d * 3 + d)
    assert repr(lens).endswith(", component='resid_pre', rank=3)")


def test_the_translator_is_h_plus_u_v_transpose_h_plus_b(hooked):
    lens = _trained(hooked)
    h = torch.randn(5, hooked.cfg.d_model)
    t = lens[1]
    expected = h + h @ (t.U @ t.V.T).T + t.bias
    torch.testing.assert_close(lens.transform_hidden(h, 1), expected)
    torch.testing.assert_close(t.weight, t.U @ t.V.T)


@pytest.mark.outside_annotations
@pytest.mark.parametrize("rank", [0, -1, 33, 2.5, True])
def test_a_rank_out_of_range_is_refused(hooked, rank):
    with pytest.raises(
        InputError, match=re.escape("rank must be None (full translators) or an integer")
    ):
        TunedLens.from_model(hooked, rank=rank)


def test_rank_d_model_is_todays_full_lens(hooked):
    lens = TunedLens.from_model(hooked, rank=hooked.cfg.d_model)
    full = TunedLens.from_model(hooked)
    assert lens.config == full.config and lens.state_dict().keys() == full.state_dict().keys()


@pytest.mark.parametrize("bias", [True, False])
def test_save_load_round_trip_is_bit_identical(any_model, tokens, tmp_path, bias):
    _, cache = any_model.run_with_cache(tokens)
    lens = _trained(any_model, bias=bias)
    lens.save(tmp_path / "lens")
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert config["rank"] == 4
    loaded = TunedLens.load(tmp_path / "lens", model=any_model)
    assert loaded.config == lens.config and loaded.config.rank == 4
    assert torch.equal(_all_log_probs(loaded, cache), _all_log_probs(lens, cache))


def test_a_low_rank_lens_for_another_model_is_refused(hooked, tmp_path):
    _trained(hooked).save(tmp_path)
    other = make_hooked("RMS", processing=True, n_layers=N_LAYERS + 1, model_name="tiny-other")
    with pytest.raises(LensMismatchError, match="model: lens has 'tiny-rms'"):
        TunedLens.load(tmp_path, model=other)


def test_files_without_a_rank_key_load_as_full(hooked, tokens, tmp_path):
    lens = TunedLens.from_model(hooked)
    with torch.no_grad():
        lens[0].weight.fill_(0.01)
    config = lens.config.to_dict()
    del config["rank"]  # as hooklens wrote it before low-rank lenses
    write_lens_dir(tmp_path, config, lens.state_dict())
    loaded = TunedLens.load(tmp_path, model=hooked)
    _, cache = hooked.run_with_cache(tokens)
    assert loaded.config.rank is None
    assert torch.equal(_all_log_probs(loaded, cache), _all_log_probs(lens, cache))


def test_a_rank_the_parameters_do_not_have_is_refused(hooked, tmp_path):
    lens = _trained(hooked)
    write_lens_dir(tmp_path, {**lens.config.to_dict(), "rank": 5}, lens.state_dict())
    with pytest.raises(
        LensFileError, match=re.escape("layer_translators.0.U has shape [32, 4], expected [32, 5]")
    ):
        TunedLens.load(tmp_path, model=hooked)
    write_lens_dir(tmp_path, {**lens.config.to_dict(), "rank": 32}, lens.state_dict())
    with pytest.raises(
        LensFileError, match=re.escape("key 'rank' should be null (full translators) or an")
    ):
        TunedLens.load(tmp_path, model=hooked)


def _tuned_lens_artifact(path, lens: TunedLens, rank) -> None:
    """The tuned-lens package's layout (config.json + params.pt) with a `rank` key."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save(lens.layer_translators.state_dict(), path / "params.pt")
    config = {
        "base_model_name_or_path": lens.config.base_model_name_or_path,
        "d_model": lens.config.d_model,
        "num_hidden_layers": lens.config.num_hidden_layers,
        "bias": True,
        "rank": rank,
    }
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("rank", [None, 8])
def test_a_tuned_lens_config_with_rank_over_full_weights_loads_as_full(
    hooked, tokens, tmp_path, rank
):
    lens = TunedLens.from_model(hooked)
    with torch.no_grad():
        lens[1].weight.fill_(0.02)
    _tuned_lens_artifact(tmp_path, lens, rank)
    if rank is None:
        loaded = TunedLens.load(tmp_path, model=hooked)
    else:
        with pytest.warns(UserWarning, match="key 'rank' is 8, but the parameters are full"):
            loaded = TunedLens.load(tmp_path, model=hooked)
    _, cache = hooked.run_with_cache(tokens)
    assert loaded.config.rank is None
    assert torch.equal(_all_log_probs(loaded, cache), _all_log_probs(lens, cache))


def test_trajectories_interventions_and_reports_read_a_low_rank_lens(hooked, model_zoo, tmp_path):
    lens = _trained(hooked)
    tokens = torch.randint(4, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
    trajectory = PredictionTrajectory.from_lens_and_model(lens, hooked, tokens)
    assert trajectory.forward_kl().stats.shape == (1, N_LAYERS + 1, 6)
    ablated = PredictionTrajectory.from_lens_and_model(
        lens, hooked, tokens, fwd_hooks=[zero_ablation(hooked, "resid_pre", 1)]
    )
    assert not torch.equal(
        torch.as_tensor(ablated.forward_kl().stats), torch.as_tensor(trajectory.forward_kl().stats)
    )
    bridge = model_zoo["bridge-llama"]  # a model with a tokenizer, for the report's text
    lenses = {"low rank": _trained(bridge)}
    path = trajectory_report(bridge, "w5 w6 w7 w8", lenses, tmp_path / "r.html")
    assert path.stat().st_size > 0


def test_a_low_rank_lens_learns_from_the_identity(hooked):
    lens = TunedLens.from_model(hooked, rank=4)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(4, VOCAB, (2, 12), generator=generator) for _ in range(8)]
    config = TrainConfig(steps=8, lr=1e-2, checkpoint_every=100)
    before, _ = batch_loss(hooked, lens, batches[0], config)
    train_lens(hooked, lens, batches, config, progress=False)
    after, _ = batch_loss(hooked, lens, batches[0], config)
    assert after.item() < before.item()
    assert all(t.U.abs().sum() > 0 for t in lens.layer_translators)
