"""Jacobian lenses resolve from a local path, a short name in TransformerLens's registry, or
a hub file (`repo_id=` + `filename=`, `"owner/repo/path.pt"`), through huggingface_hub's own
cache in offline mode (no network here).

The hub is imitated exactly: a lens saved by `JacobianLens.save` is placed in a temporary
`HF_HUB_CACHE` the way huggingface_hub lays out a download (`blobs/<sha256>`,
`snapshots/<commit>/<path>` linking to the blob, `refs/<branch>`), and `hf_hub_download`
reads it from there. Names resolve as TransformerLens resolves them: its own resolver is
called and compared, and its own `from_pretrained` reads the same cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

import hooklens.artifacts.jlens_registry as jlens_registry
from hooklens import JacobianLens, LensMismatchError
from hooklens.artifacts import (
    HubFile,
    HubUnreachableError,
    LensNotFoundError,
    _hf,
    jacobian_lens_file,
    jacobian_lens_names,
    jacobian_lens_registry,
    resolve_jacobian_lens,
)
from hooklens.errors import InputError
from tests.conftest import D_MODEL, N_LAYERS

REPO = "test-org/jacobian-lenses"
FILE = "tiny-llama/jlens/words/tiny-llama_jacobian_lens.pt"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch):
    """huggingface_hub offline, with an empty cache of the test's own as its default."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def install_in_cache(
    cache: Path,
    repo_id: str,
    files: dict[str, bytes],
    *,
    commit: str = COMMIT,
    ref: str | None = "main",
) -> None:
    """Lay `files` out in `cache` as huggingface_hub does after downloading them from
    `repo_id` at `commit` (reached through branch or tag `ref`, unless None)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for filename, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        pointer = repo / "snapshots" / commit / filename
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def registry_json(**extra: object) -> str:
    """A registry in TransformerLens's format, naming the tiny test model's lens."""
    return json.dumps(
        {
            "_comment": "test registry",
            **extra,
            "tiny-llama": {
                "aliases": ["test-org/tiny-llama"],
                "repo_id": REPO,
                "filename": FILE,
                "corpus": "test words",
            },
            "other-model": {
                "aliases": ["test-org/other-model"],
                "repo_id": REPO,
                "filename": "other-model/jlens/words/other-model_jacobian_lens.pt",
            },
        }
    )


@pytest.fixture
def test_registry(monkeypatch):
    """Point the resolver at the test registry instead of TransformerLens's."""
    monkeypatch.setattr(jlens_registry, "_registry_text", registry_json)


def installed_registry_or_skip() -> dict:
    """TransformerLens's own registry, read by its own loader; skip where it has none."""
    try:
        from transformer_lens.tools.analysis import jacobian_lens as tl_jacobian
    except ImportError:
        pytest.skip("this TransformerLens has no Jacobian lens")
    if not hasattr(tl_jacobian, "_resolve_registry_entry"):
        pytest.skip("this TransformerLens has no Jacobian lens registry")
    try:
        return tl_jacobian._load_registry()
    except FileNotFoundError:
        pytest.skip("this TransformerLens has no jacobian_lens_registry.json")


@pytest.fixture(scope="module")
def bridge(model_zoo):
    return model_zoo["bridge-llama"]  # raw, named "tiny-llama"


def fitted_lens(bridge, seed: int) -> JacobianLens:
    """A J-lens with random matrices (close to the identity) for every source layer."""
    generator = torch.Generator().manual_seed(seed)
    jacobians = {
        layer: torch.eye(D_MODEL) + 0.1 * torch.randn(D_MODEL, D_MODEL, generator=generator)
        for layer in range(N_LAYERS - 1)
    }
    return JacobianLens.from_model(bridge, jacobians, n_prompts=5, metadata={"corpus": "words"})


def saved_bytes(lens: JacobianLens, tmp_path: Path, name: str) -> bytes:
    return lens.save(tmp_path / f"{name}.pt").read_bytes()  # the reference format, fp16


def assert_same_matrices(loaded: JacobianLens, expected: JacobianLens) -> None:
    """The file stores fp16: equal to the float64 originals within fp16 rounding."""
    assert loaded.fitted_layers == expected.fitted_layers
    for layer in expected.fitted_layers:
        torch.testing.assert_close(
            loaded.jacobian(layer).double(),
            expected.jacobian(layer).double(),
            rtol=2**-10,
            atol=2**-14,
        )


@pytest.fixture
def lens(bridge):
    return fitted_lens(bridge, seed=1)


@pytest.fixture
def cached(offline_cache, tmp_path, lens):
    """The lens in the cache at `REPO`/`FILE`, main branch."""
    install_in_cache(offline_cache, REPO, {FILE: saved_bytes(lens, tmp_path, "main")})
    return offline_cache


# --- hub files by repo_id and filename -----------------------------------------------------


def test_a_lens_loads_by_repo_id_and_filename_from_the_cache(bridge, lens, cached):
    by_arguments = JacobianLens.load(None, bridge, repo_id=REPO, filename=FILE)
    by_repository_first = JacobianLens.load(REPO, bridge, filename=FILE)  # TransformerLens's form
    by_path_in_repository = JacobianLens.load(FILE, bridge, repo_id=REPO)
    by_one_string = JacobianLens.load(f"{REPO}/{FILE}", bridge)
    for loaded in (by_arguments, by_repository_first, by_path_in_repository, by_one_string):
        assert_same_matrices(loaded, lens)
        assert loaded.n_prompts == 5 and loaded.metadata["corpus"] == "words"
    path = resolve_jacobian_lens(None, repo_id=REPO, filename=FILE)
    assert path == cached / "models--test-org--jacobian-lenses" / "snapshots" / COMMIT / FILE


def test_the_one_string_form_names_the_repository_by_its_first_two_parts():
    assert jacobian_lens_file("owner/repo/deep/er/lens.pt") == HubFile(
        "owner/repo", "deep/er/lens.pt"
    )
    assert jacobian_lens_file("owner/repo/lens.pt", revision="v1").revision == "v1"


def test_revision_selects_the_snapshot(bridge, lens, cached, tmp_path):
    older = fitted_lens(bridge, seed=2)
    install_in_cache(
        cached, REPO, {FILE: saved_bytes(older, tmp_path, "v0")}, commit=OTHER_COMMIT, ref="v0"
    )
    assert_same_matrices(JacobianLens.load(None, bridge, repo_id=REPO, filename=FILE), lens)
    for revision in ("v0", OTHER_COMMIT):
        loaded = JacobianLens.load(None, bridge, repo_id=REPO, filename=FILE, revision=revision)
        assert_same_matrices(loaded, older)


def test_a_hub_lens_for_another_model_is_still_refused_by_its_own_metadata(model_zoo, cached):
    with pytest.raises(LensMismatchError, match="fitted for 'tiny-llama'"):
        JacobianLens.load(None, model_zoo["bridge-gpt2"], repo_id=REPO, filename=FILE)
    with pytest.raises(LensMismatchError, match="raw activations"):
        JacobianLens.load(None, model_zoo["bridge-llama-compat"], repo_id=REPO, filename=FILE)


# --- short names ---------------------------------------------------------------------------


def test_a_short_name_or_alias_resolves_through_the_registry(bridge, lens, cached, test_registry):
    for name in ("tiny-llama", "test-org/tiny-llama"):
        assert_same_matrices(JacobianLens.load(name, bridge), lens)
    assert jacobian_lens_names("tiny-llama") == ["tiny-llama"]
    assert jacobian_lens_registry()["tiny-llama"].corpus == "test words"


def test_a_registry_that_pins_a_revision_downloads_that_commit(
    bridge, lens, cached, tmp_path, monkeypatch
):
    """TransformerLens 4 pins every entry at the registry's `revision`, not main."""
    pinned = fitted_lens(bridge, seed=3)
    install_in_cache(
        cached, REPO, {FILE: saved_bytes(pinned, tmp_path, "pinned")}, commit=OTHER_COMMIT, ref=None
    )
    monkeypatch.setattr(
        jlens_registry, "_registry_text", lambda: registry_json(revision=OTHER_COMMIT)
    )
    assert jacobian_lens_file("tiny-llama").revision == OTHER_COMMIT
    assert_same_matrices(JacobianLens.load("tiny-llama", bridge), pinned)
    assert_same_matrices(JacobianLens.load("tiny-llama", bridge, revision="main"), lens)


def test_the_installed_registry_resolves_every_name_as_transformer_lens_does():
    raw = installed_registry_or_skip()
    from transformer_lens.tools.analysis import jacobian_lens as tl_jacobian

    ours = jacobian_lens_registry()
    assert sorted(ours) == sorted(k for k, v in raw.items() if isinstance(v, dict))
    assert "gpt2-small" in ours and ours["gpt2-small"].repo_id == "neuronpedia/jacobian-lens"
    pinned = getattr(tl_jacobian, "_registry_revision", lambda: None)()
    names = [*ours, *(alias for entry in ours.values() for alias in entry.aliases)]
    for name in names:
        found = jacobian_lens_file(name)
        assert isinstance(found, HubFile)
        assert (found.repo_id, found.filename) == tl_jacobian._resolve_registry_entry(name)
        assert found.revision == pinned


def test_a_real_short_name_reads_the_file_transformer_lens_reads(bridge, lens, tmp_path):
    """`gpt2-small` placed in the cache where TransformerLens looks: its `from_pretrained`
    and our resolver land on the same file."""
    installed_registry_or_skip()
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

    entry = jacobian_lens_registry()["gpt2-small"]
    install_in_cache(
        Path(constants.HF_HUB_CACHE),
        entry.repo_id,
        {entry.filename: saved_bytes(lens, tmp_path, "gpt2")},
        commit=entry.revision or COMMIT,
    )
    theirs = TLJacobianLens.from_pretrained("gpt2-small")
    path = resolve_jacobian_lens("gpt2-small", model_name="openai-community/gpt2")
    assert path.name == "gpt2_jacobian_lens.pt" and path.is_file()
    with pytest.warns(UserWarning, match="published Jacobian lens of 'gpt2-small'"):
        ours = JacobianLens.load("gpt2-small", bridge, strict=False)  # not gpt2: only warned
    assert ours.fitted_layers == theirs.source_layers
    for layer in ours.fitted_layers:
        torch.testing.assert_close(ours.jacobian(layer), theirs.jacobians[layer].float())


# --- errors --------------------------------------------------------------------------------


def test_an_unknown_name_suggests_close_ones(bridge, test_registry):
    with pytest.raises(LensNotFoundError, match=r"'tiny-lama'.*Did you mean 'tiny-llama'"):
        JacobianLens.load("tiny-lama", bridge)
    with pytest.raises(FileNotFoundError, match=r"test-org/tiny-lama.*pass filename="):
        JacobianLens.load("test-org/tiny-lama", bridge)  # still a FileNotFoundError


def test_an_unknown_name_suggests_close_ones_from_the_installed_registry(bridge):
    installed_registry_or_skip()
    with pytest.raises(LensNotFoundError, match=r"Did you mean 'gpt2-small'"):
        JacobianLens.load("gpt2-smal", bridge)


def test_a_file_not_cached_while_offline_says_what_to_fetch(bridge, offline_cache):
    wanted = rf"{FILE} in hub repository {REPO}.*not in the huggingface_hub cache"
    with pytest.raises(HubUnreachableError, match=wanted) as error:
        JacobianLens.load(None, bridge, repo_id=REPO, filename=FILE)
    message = str(error.value)
    assert f"hf download {REPO} {FILE}" in message and str(offline_cache) in message
    assert f"https://huggingface.co/{REPO}/resolve/main/{FILE}" in message


def test_a_file_missing_from_a_cached_repository_is_not_cached_either(bridge, cached):
    with pytest.raises(HubUnreachableError, match=r"other\.pt in hub repository"):
        JacobianLens.load(None, bridge, repo_id=REPO, filename="other.pt")


def test_a_registry_lens_for_another_model_is_refused_before_downloading(
    bridge, test_registry, monkeypatch
):
    import huggingface_hub

    def no_download(*args, **kwargs):
        pytest.fail("downloaded a lens the registry says is for another model")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    refusal = (
        r"lens of 'other-model'.*the model is 'tiny-llama'; "
        r"the registry's lens for it is 'tiny-llama'"
    )
    with pytest.raises(LensMismatchError, match=refusal):
        JacobianLens.load("other-model", bridge)
    other_file = jacobian_lens_registry()["other-model"].filename
    with pytest.raises(LensMismatchError, match=refusal):  # the same file, named explicitly
        JacobianLens.load(None, bridge, repo_id=REPO, filename=other_file)


def test_the_installed_registry_refuses_another_models_lens(bridge, monkeypatch):
    import huggingface_hub

    installed_registry_or_skip()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail())
    with pytest.raises(LensMismatchError, match=r"'gpt2-small'.*'tiny-llama'.*hooklens fit-jlens"):
        JacobianLens.load("gpt2-small", bridge)


def test_without_a_registry_short_names_say_so_and_hub_files_still_load(
    bridge, lens, cached, monkeypatch
):
    monkeypatch.setattr(
        jlens_registry, "JACOBIAN_LENS_REGISTRY_PACKAGE", "transformer_lens_without_one"
    )
    with pytest.raises(
        LensNotFoundError, match=r"TransformerLens .* has no jacobian_lens_registry"
    ):
        JacobianLens.load("gpt2-small", bridge)
    assert_same_matrices(JacobianLens.load(None, bridge, repo_id=REPO, filename=FILE), lens)


def test_local_paths_resolve_to_themselves(bridge, lens, tmp_path):
    file, folder = lens.save(tmp_path / "jlens.pt"), lens.save(tmp_path / "jlens")
    assert resolve_jacobian_lens(file) == file and resolve_jacobian_lens(str(folder)) == folder
    assert resolve_jacobian_lens(tmp_path, filename="jlens.pt") == file  # a folder + filename
    with pytest.raises(InputError, match="local path"):
        resolve_jacobian_lens(file, revision="v1")
    for missing in ("missing.pt", str(tmp_path / "missing"), "runs/jlens/out"):
        with pytest.raises(FileNotFoundError, match="no such local file or folder"):
            JacobianLens.load(missing, bridge)


def test_contradicting_arguments_are_refused():
    with pytest.raises(InputError, match="repository twice"):
        jacobian_lens_file("a/b", repo_id="c/d", filename=FILE)
    with pytest.raises(InputError, match="needs the repository"):
        jacobian_lens_file(None, filename=FILE)
    with pytest.raises(InputError, match="filename="):
        jacobian_lens_file(None, repo_id=REPO)
    with pytest.raises(InputError, match="pass a Jacobian lens"):
        jacobian_lens_file(None)


def test_online_errors_say_what_is_missing(monkeypatch):
    """The online branches, with huggingface_hub's 404s stood in for."""
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

    response = types.SimpleNamespace(status_code=404, headers={}, request=None)
    for error, said in [
        (RemoteEntryNotFoundError("404", response=response), "has no such file"),
        (RepositoryNotFoundError("404", response=response), "does not exist"),
    ]:

        def not_found(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_found)
        with pytest.raises(LensNotFoundError, match=said):
            resolve_jacobian_lens(None, repo_id=REPO, filename=FILE)


def test_strict_false_warns_and_loads_another_models_registry_lens(
    bridge, lens, tmp_path, offline_cache, monkeypatch
):
    monkeypatch.setattr(jlens_registry, "_registry_text", registry_json)
    other_file = jacobian_lens_registry()["other-model"].filename
    install_in_cache(offline_cache, REPO, {other_file: saved_bytes(lens, tmp_path, "other")})
    with pytest.warns(UserWarning, match="lens of 'other-model'"):
        loaded = JacobianLens.load("other-model", bridge, strict=False)
    assert_same_matrices(loaded, lens)


def test_an_unreachable_hub_reads_the_cache_without_retrying(bridge, lens, cached, monkeypatch):
    """HF_HUB_OFFLINE unset but no network: the cache is read at once (huggingface_hub
    alone would retry the hub for ~25 s first)."""
    import huggingface_hub

    real_download, calls = huggingface_hub.hf_hub_download, []

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real_download(*args, **kwargs)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_hf, "offline", lambda: True)  # what hub_reachable() finds here
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording)
    assert_same_matrices(JacobianLens.load(None, bridge, repo_id=REPO, filename=FILE), lens)
    with pytest.raises(HubUnreachableError, match="not in the huggingface_hub cache"):
        JacobianLens.load(None, bridge, repo_id=REPO, filename="other.pt")
    assert [call["local_files_only"] for call in calls] == [True, True]


def test_hooklens_eval_and_report_read_a_published_lens_by_name(
    bridge, offline_cache, test_registry, tmp_path, monkeypatch, capsys
):
    from hooklens import models
    from hooklens.cli import main

    lens = fitted_lens(bridge, seed=7)
    install_in_cache(offline_cache, REPO, {FILE: saved_bytes(lens, tmp_path, "published")})
    monkeypatch.setattr(models, "load", lambda name, **kwargs: bridge)
    corpus = tmp_path / "texts.jsonl"
    rows = [" ".join(f"w{4 + (i * 7 + j) % 6}" for j in range(40)) for i in range(60)]
    corpus.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    out = tmp_path / "eval.json"
    arguments = ["--model", "tiny-llama", "--data", str(corpus), "--seq-len", "16"]
    assert main(["eval", "--lens", "tiny-llama", *arguments, "--output", str(out)]) == 0
    results = json.loads(out.read_text())["lenses"]
    assert set(results) == {"logit lens", "tiny-llama"}
    assert results["tiny-llama"]["kl_to_output"][1] != results["logit lens"]["kl_to_output"][1]
    report = tmp_path / "report.html"
    command = ["report", "--text", "w5 w6 w7 w8", "--lens", f"{REPO}/{FILE}"]
    assert main([*command, "--model", "tiny-llama", "--output", str(report)]) == 0
    assert "Jacobian lens" in report.read_text()


def test_hooklens_eval_refuses_an_unknown_or_uncached_name_before_the_model_loads(
    offline_cache, test_registry, monkeypatch, capsys
):
    from hooklens import models
    from hooklens.cli import main

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the lens was checked")

    monkeypatch.setattr(models, "load", must_not_load)
    assert main(["eval", "--lens", "tiny-lama", "--model", "tiny-llama"]) == 2
    assert "Did you mean 'tiny-llama'" in capsys.readouterr().err
    assert main(["eval", "--lens", "tiny-llama", "--model", "tiny-llama"]) == 2  # not cached
    assert "hf download" in capsys.readouterr().err
    assert main(["eval", "--lens", "other-model", "--model", "tiny-llama"]) == 2
    assert "tiny-llama" in capsys.readouterr().err


def test_importing_the_jacobian_lens_loads_no_network_module():
    """huggingface_hub (and the old network module hooklens.hub) load only when a lens is
    fetched, not when the lens module is imported."""
    import subprocess
    import sys

    code = (
        "import sys, hooklens.lenses.jacobian; "
        "print(sorted(m for m in sys.modules if m in ('huggingface_hub', 'hooklens.hub')))"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "[]"
