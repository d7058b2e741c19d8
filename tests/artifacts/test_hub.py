"""Pretrained lenses resolve by model name, explicit id, $TUNED_LENS_REPO_ID or a local
folder, through huggingface_hub's own cache in offline mode (no network here).

The hub repository is imitated exactly: a folder laid out like the tuned-lens space
(`lens/<model name>/config.json`, `params.pt`) is placed in a huggingface_hub cache as a
snapshot of the repository's main branch, and `hf_hub_download` reads it from there.
"""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from hooklens import LensMismatchError, TunedLens
from hooklens.artifacts import (
    HubUnreachableError,
    LensNotFoundError,
    available_lens_artifacts,
    lens_repository,
    load_artifacts,
)
from hooklens.models import hub_model_name
from tests.artifacts.test_save_load import _trained, _write_tuned_lens_artifact

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """huggingface_hub in offline mode, whatever the environment says."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("TUNED_LENS_REPO_ID", raising=False)
    monkeypatch.delenv("TUNED_LENS_REPO_TYPE", raising=False)


def hub_layout(root: Path, lenses: dict[str, TunedLens]) -> Path:
    """A folder laid out like the tuned-lens repository, lenses in its format."""
    for name, lens in lenses.items():
        _write_tuned_lens_artifact(root / "lens" / name, lens, prefixed=False)
    return root


def install_in_cache(
    repo: Path, cache: Path, repo_id: str, repo_type: str, ref: str = "main", commit: str = COMMIT
) -> None:
    """Put `repo` into a huggingface_hub cache as the snapshot of branch or tag `ref`."""
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    shutil.copytree(repo, folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)


@pytest.fixture
def lenses(hooked):
    return {
        "tiny-rms": _trained(hooked, seed=1),
        "EleutherAI/pythia-160m-deduped": _trained(hooked, seed=2),
    }


@pytest.fixture
def cache(tmp_path, lenses):
    cache = tmp_path / "hf-cache"
    install_in_cache(
        hub_layout(tmp_path / "repo", lenses), cache, "AlignmentResearch/tuned-lens", "space"
    )
    return cache


def same_parameters(a: TunedLens, b: TunedLens) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lens_resolves_by_the_models_name_from_the_warm_cache(hooked, cache, lenses):
    lens = TunedLens.from_model_and_pretrained(hooked, cache_dir=cache)  # "tiny-rms"
    assert same_parameters(lens, lenses["tiny-rms"])


def test_lens_resolves_by_explicit_id(hooked, cache, lenses):
    lens = TunedLens.from_model_and_pretrained(
        hooked, "EleutherAI/pythia-160m-deduped", cache_dir=cache
    )
    assert same_parameters(lens, lenses["EleutherAI/pythia-160m-deduped"])
    config, params = load_artifacts("tiny-rms", cache_dir=cache)
    assert config.name == "config.json" and params.name == "params.pt"
    assert COMMIT in str(params)  # read from the cache's snapshot


def test_repository_comes_from_the_environment(hooked, tmp_path, lenses, monkeypatch):
    cache = tmp_path / "hf-cache"
    install_in_cache(hub_layout(tmp_path / "mine", lenses), cache, "me/my-lenses", "model")
    monkeypatch.setenv("TUNED_LENS_REPO_ID", "me/my-lenses")
    assert lens_repository() == ("me/my-lenses", "model")  # a repo of one's own: a model repo
    lens = TunedLens.from_model_and_pretrained(hooked, cache_dir=cache)
    assert same_parameters(lens, lenses["tiny-rms"])
    monkeypatch.setenv("TUNED_LENS_REPO_TYPE", "dataset")
    assert lens_repository() == ("me/my-lenses", "dataset")
    assert lens_repository("other/repo", "space") == ("other/repo", "space")  # arguments win


def test_lens_resolves_from_local_folders(hooked, tmp_path, lenses):
    repo = hub_layout(tmp_path / "repo", lenses)
    by_folder = TunedLens.from_model_and_pretrained(hooked, str(repo / "lens" / "tiny-rms"))
    by_repo_folder = TunedLens.from_model_and_pretrained(hooked, repo_id=str(repo))
    assert same_parameters(by_folder, lenses["tiny-rms"])
    assert same_parameters(by_repo_folder, lenses["tiny-rms"])
    assert available_lens_artifacts(repo_id=str(repo)) == sorted(lenses)
    lenses["tiny-rms"].save(tmp_path / "ours")  # our own format resolves the same way
    ours = TunedLens.from_model_and_pretrained(hooked, str(tmp_path / "ours"))
    assert same_parameters(ours, lenses["tiny-rms"])


def test_missing_lens_lists_the_available_ones(hooked, cache, tmp_path, lenses):
    with pytest.raises(
        LensNotFoundError, match=r"'gpt2'.*EleutherAI/pythia-160m-deduped, tiny-rms"
    ):
        TunedLens.from_model_and_pretrained(hooked, "gpt2", cache_dir=cache)
    assert available_lens_artifacts(cache_dir=cache) == sorted(lenses)
    repo = hub_layout(tmp_path / "repo2", lenses)
    with pytest.raises(
        LensNotFoundError, match="Available: EleutherAI/pythia-160m-deduped, tiny-rms"
    ):
        load_artifacts("gpt2", repo_id=str(repo))


def test_cold_cache_says_it_needs_the_network(hooked, tmp_path):
    with pytest.raises(
        HubUnreachableError, match=r"not in the huggingface_hub cache.*cannot be reached"
    ):
        TunedLens.from_model_and_pretrained(hooked, cache_dir=tmp_path / "empty")
    with pytest.raises(HubUnreachableError, match="Connect once"):
        available_lens_artifacts(cache_dir=tmp_path / "empty")


def test_online_missing_lens_lists_the_repositorys_lenses(hooked, monkeypatch):
    """The online branch, with huggingface_hub's 404 and file listing stood in for."""
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    from hooklens.artifacts import _hf

    def not_found(*args, **kwargs):
        response = types.SimpleNamespace(status_code=404, headers={}, request=None)
        raise RemoteEntryNotFoundError("404", response=response)

    files = [
        "README.md",
        "lens/gpt2/config.json",
        "lens/gpt2/params.pt",
        "lens/EleutherAI/pythia-160m/config.json",
    ]
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_found)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, *a, **k: files)
    monkeypatch.setattr(_hf, "offline", lambda: False)
    with pytest.raises(LensNotFoundError, match=r"Available: EleutherAI/pythia-160m, gpt2"):
        TunedLens.from_model_and_pretrained(hooked, "llama-7b")


def test_unknown_keyword_is_refused(hooked, cache):
    with pytest.raises(TypeError, match=r"unexpected arguments \['mmap'\]"):
        TunedLens.from_model_and_pretrained(hooked, cache_dir=cache, mmap=True)


def test_hub_names_of_transformer_lens_models():
    def adapter(name):
        return types.SimpleNamespace(model_name=name)

    assert hub_model_name(adapter("pythia-160m-deduped")) == "EleutherAI/pythia-160m-deduped"
    assert hub_model_name(adapter("gpt2")) == "gpt2"
    assert hub_model_name(adapter("SmolLM2-135M-Instruct")) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_model_name(adapter("my-own-model")) == "my-own-model"


def test_raw_trained_lens_reads_a_processed_rmsnorm_model_exactly(model_zoo, tokens, tmp_path):
    """Folding RMSNorm gains into W_U leaves the residual stream as it was, so a lens
    trained on raw hidden states reads the processed model exactly as the raw one."""
    raw, processed = model_zoo["hooked-rms"], model_zoo["hooked-rms-processed"]
    repo = hub_layout(tmp_path / "repo", {"tiny-rms": _trained(raw)})
    on_raw = TunedLens.from_model_and_pretrained(raw, repo_id=str(repo))
    on_processed = TunedLens.from_model_and_pretrained(processed, repo_id=str(repo))
    _, raw_cache = raw.run_with_cache(tokens)
    _, processed_cache = processed.run_with_cache(tokens)
    for layer in range(on_raw.n_layers):
        expected = on_raw.log_probs(raw_cache, layer=layer)
        torch.testing.assert_close(
            on_processed.log_probs(processed_cache, layer=layer), expected, atol=1e-4, rtol=0
        )


def test_raw_trained_lens_is_refused_on_a_centred_layernorm_model(model_zoo, tmp_path):
    raw, centred = model_zoo["hooked-ln"], model_zoo["hooked-ln-processed"]
    repo = hub_layout(tmp_path / "repo", {"tiny-ln": _trained(raw)})
    TunedLens.from_model_and_pretrained(raw, repo_id=str(repo))
    with pytest.raises(LensMismatchError, match="from_pretrained_no_processing"):
        TunedLens.from_model_and_pretrained(centred, repo_id=str(repo))
    with pytest.warns(UserWarning, match="centred"):
        TunedLens.from_model_and_pretrained(centred, repo_id=str(repo), strict=False)


def test_lens_for_another_model_name_is_refused(model_zoo, tmp_path):
    raw = model_zoo["hooked-rms"]
    lens = _trained(raw)
    lens.config.base_model_name_or_path = "EleutherAI/pythia-70m"
    repo = hub_layout(tmp_path / "repo", {"tiny-rms": lens})
    with pytest.raises(LensMismatchError, match="trained on 'EleutherAI/pythia-70m'"):
        TunedLens.from_model_and_pretrained(raw, repo_id=str(repo))


def test_revision_selects_the_snapshot(hooked, cache, lenses, tmp_path):
    older = {"tiny-rms": _trained(hooked, seed=7)}
    repo_id = "AlignmentResearch/tuned-lens"
    install_in_cache(hub_layout(tmp_path / "v0", older), cache, repo_id, "space", "v0", "f" * 40)
    assert same_parameters(
        TunedLens.from_model_and_pretrained(hooked, cache_dir=cache, revision="v0"),
        older["tiny-rms"],
    )
    assert same_parameters(
        TunedLens.from_model_and_pretrained(hooked, cache_dir=cache), lenses["tiny-rms"]
    )


def test_from_unembed_and_pretrained(hooked, cache, lenses):
    from hooklens import Unembed

    lens = TunedLens.from_unembed_and_pretrained(
        Unembed.from_model(hooked), "tiny-rms", cache_dir=cache
    )
    assert same_parameters(lens, lenses["tiny-rms"]) and lens.adapter.model is hooked
    bare = Unembed(hooked.ln_final, hooked.W_U)  # built by hand: no model to check against
    with pytest.raises(ValueError, match="must come from a model"):
        TunedLens.from_unembed_and_pretrained(bare, "tiny-rms", cache_dir=cache)
