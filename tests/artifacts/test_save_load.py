"""Saved lenses load bit-identically, and only for the model they were made for."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hooklens import LensMismatchError, TunedLens
from tests.conftest import N_LAYERS, make_hooked


def _trained(model, seed: int = 0, **kwargs) -> TunedLens:
    """A lens with non-trivial translators, as if trained."""
    lens = TunedLens.from_model(model, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lens.parameters():
            param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    return lens


def _all_log_probs(lens, cache):
    return torch.stack([log_probs for _, log_probs in lens.iter_log_probs(cache)])


@pytest.mark.parametrize("bias", [True, False])
def test_save_load_round_trip_is_bit_identical(any_model, tokens, tmp_path, bias):
    _, cache = any_model.run_with_cache(tokens)
    lens = _trained(any_model, bias=bias)
    lens.save(tmp_path / "lens")
    assert sorted(p.name for p in (tmp_path / "lens").iterdir()) == [
        "config.json",
        "params.safetensors",
    ]
    loaded = TunedLens.load(tmp_path / "lens", model=any_model)
    assert loaded.config == lens.config
    assert torch.equal(_all_log_probs(loaded, cache), _all_log_probs(lens, cache))


def test_saved_config_records_the_fingerprint(hooked, tmp_path):
    _trained(hooked).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["fingerprint"]["model_name"] == "tiny-rms"
    assert config["fingerprint"]["fold_ln"] is True
    assert len(config["fingerprint"]["unembedding_hash"]) == 64


def test_lens_for_another_model_is_refused(hooked, tmp_path):
    _trained(hooked).save(tmp_path)
    other = make_hooked("RMS", processing=True, n_layers=N_LAYERS + 1, model_name="tiny-other")
    with pytest.raises(LensMismatchError, match="model: lens has 'tiny-rms'") as info:
        TunedLens.load(tmp_path, model=other)
    assert "n_layers: lens has 3, model has 4" in str(info.value)


def test_lens_for_another_unembedding_is_refused(hooked, tmp_path):
    _trained(hooked).save(tmp_path)
    fine_tuned = copy.deepcopy(hooked)
    with torch.no_grad():  # a change that keeps W_U centred, as processing would
        fine_tuned.W_U[5, 50] += 0.01
        fine_tuned.W_U[5, 51] -= 0.01
    with pytest.raises(LensMismatchError, match="unembedding") as info:
        TunedLens.load(tmp_path, model=fine_tuned)
    assert "strict=False" in str(info.value)
    with pytest.warns(UserWarning, match="unembedding"):
        TunedLens.load(tmp_path, model=fine_tuned, strict=False)


def test_lens_for_processed_weights_is_refused_on_raw_model(model_zoo, tmp_path):
    _trained(model_zoo["hooked-ln-processed"]).save(tmp_path)
    with pytest.raises(LensMismatchError, match="center_writing_weights") as info:
        TunedLens.load(tmp_path, model=model_zoo["hooked-ln"])
    assert "HookedTransformer.from_pretrained(name)" in str(info.value)


def test_lens_for_raw_weights_is_refused_on_processed_model(model_zoo, tmp_path):
    _trained(model_zoo["hooked-ln"]).save(tmp_path)
    with pytest.raises(LensMismatchError, match="fold_ln") as info:
        TunedLens.load(tmp_path, model=model_zoo["hooked-ln-processed"])
    assert "from_pretrained_no_processing" in str(info.value)


def _write_tuned_lens_artifact(path, lens: TunedLens, prefixed: bool) -> None:
    """The tuned-lens package's layout: config.json + params.pt (a torch.save'd dict)."""
    path.mkdir(parents=True, exist_ok=True)
    state = lens.layer_translators.state_dict()
    if prefixed:  # older tuned-lens saved the whole lens, unembedding included
        state = {f"layer_translators.{k}": v for k, v in state.items()}
        state["unembed.unembedding.weight"] = torch.zeros(3, 3)
    torch.save(state, path / "params.pt")
    config = {
        "base_model_name_or_path": lens.config.base_model_name_or_path,
        "d_model": lens.config.d_model,
        "num_hidden_layers": lens.config.num_hidden_layers,
        "bias": lens.config.bias,
        "base_model_revision": None,
        "unembed_hash": "corners-only",
        "lens_type": "linear_tuned_lens",
    }
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("prefixed", [False, True])
def test_tuned_lens_artifact_loads_like_native(hooked, tokens, tmp_path, prefixed):
    _, cache = hooked.run_with_cache(tokens)
    lens = _trained(hooked)
    lens.save(tmp_path / "native")
    _write_tuned_lens_artifact(tmp_path / "reference", lens, prefixed)
    native = TunedLens.load(tmp_path / "native", model=hooked)
    reference = TunedLens.load(tmp_path / "reference", model=hooked)
    assert torch.equal(_all_log_probs(reference, cache), _all_log_probs(native, cache))


def test_tuned_lens_artifact_of_another_size_is_refused(hooked, tmp_path):
    other = make_hooked("RMS", processing=True, n_layers=N_LAYERS + 2)
    _write_tuned_lens_artifact(tmp_path, TunedLens.from_model(other), prefixed=False)
    with pytest.raises(LensMismatchError, match="5 layers"):
        TunedLens.load(tmp_path, model=hooked)


def test_tuned_lens_artifact_refused_on_centred_residual_stream(model_zoo, tmp_path):
    raw, centred = model_zoo["hooked-ln"], model_zoo["hooked-ln-processed"]
    _write_tuned_lens_artifact(tmp_path, TunedLens.from_model(raw), prefixed=False)
    TunedLens.load(tmp_path, model=raw)
    with pytest.raises(LensMismatchError, match="from_pretrained_no_processing"):
        TunedLens.load(tmp_path, model=centred)


def test_missing_directory_says_what_it_expected(hooked, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"params\.safetensors"):
        TunedLens.load(tmp_path / "nowhere", model=hooked)


def test_overwriting_a_lens_leaves_no_temporary_files(hooked, tmp_path):
    _trained(hooked, seed=1).save(tmp_path)
    _trained(hooked, seed=2).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "params.safetensors"]


def test_old_paths_of_the_lens_file_modules_keep_their_names_with_a_warning():
    """hooklens.files, hooklens.hub and the module hooklens.artifacts became the package
    hooklens.artifacts: the names users imported from them still import, the moved
    modules with a DeprecationWarning naming the new path."""
    import importlib
    import sys

    import hooklens.artifacts as artifacts
    from hooklens.errors import HubUnreachableError, LensNotFoundError, StaleLockWarning

    for old in ("hooklens.files", "hooklens.hub"):
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match="hooklens.artifacts"):
            importlib.import_module(old)
    files, hub = sys.modules["hooklens.files"], sys.modules["hooklens.hub"]
    assert files is artifacts
    for name in ("StagedWrites", "atomic_write", "atomic_write_text", "output_lock", "read_lock"):
        assert getattr(files, name) is getattr(artifacts, name)
    for name in ("load_artifacts", "available_lens_artifacts", "jacobian_lens_registry"):
        assert getattr(hub, name) is getattr(artifacts, name)
    assert hub.hub_model_name.__module__ == "hooklens.models"
    assert artifacts.LensNotFoundError is hub.LensNotFoundError is LensNotFoundError
    assert artifacts.HubUnreachableError is hub.HubUnreachableError is HubUnreachableError
    assert artifacts.StaleLockWarning is StaleLockWarning
