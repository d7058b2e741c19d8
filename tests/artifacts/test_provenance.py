"""Every lens file records what made it (versions, model, fit settings), a lens shows it,
a load under another transformers or TransformerLens major.minor warns once, and files
without provenance load silently."""

from __future__ import annotations

import importlib.metadata
import json
import warnings

import pytest
import torch

from hooklens import JacobianLens, TunedLens
from hooklens.artifacts import config_digest, provenance
from hooklens.artifacts.jlens_pt import FIT_RECORD_KEY, RECORD_KEY
from hooklens.errors import ProvenanceWarning
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.loop import CHECKPOINT_FILE, TrainConfig, train_lens
from tests.conftest import VOCAB

PROMPTS = ["w5 w6 w7 w8 w9 w10 w11", "w12 w13 w14 w15 w16 w17"]
INSTALLED = {
    name: importlib.metadata.version(name.replace("_", "-"))
    for name in ("hooklens", "transformers", "transformer_lens")
} | {"torch": torch.__version__}  # with its build (+cpu, +cu130): the metadata may omit it


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """Each test starts with no version pair warned about yet."""
    monkeypatch.setattr(provenance, "_warned", set())


@pytest.fixture(scope="module")
def bridge(model_zoo):
    return model_zoo["bridge-llama"]  # raw weights: J-lenses fit on it


def _batches(n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(4, VOCAB, (2, 8), generator=generator) for _ in range(n)]


def _jlens(bridge) -> JacobianLens:
    return JacobianLens.fit(
        bridge, PROMPTS, max_seq_len=8, skip_first_positions=1, dim_batch=4, progress=False
    )


def _versions(record) -> dict[str, str]:
    return {name: record[name] for name in INSTALLED}


def _installed_elsewhere(monkeypatch, package: str, version: str) -> None:
    """Pretend `package` is installed at `version`."""
    real = provenance.package_version
    monkeypatch.setattr(
        provenance, "package_version", lambda name: version if name == package else real(name)
    )


def test_a_tuned_lens_directory_records_versions_model_and_fit_settings(bridge, tmp_path):
    lens = fit_tuned_lens(bridge, _batches(), alpha=1e-3, progress=False)
    lens.save(tmp_path / "lens")
    record = json.loads((tmp_path / "lens" / "config.json").read_text())["provenance"]
    assert _versions(record) == INSTALLED
    assert record["model_name"] == lens.adapter.model_name
    assert "model_revision" not in record  # the tiny model's config records none
    assert record["settings"] == {"method": "fast fit", "alpha": 1e-3, "tokens": 48}

    loaded = TunedLens.load(tmp_path / "lens", bridge)
    assert loaded.provenance == record
    assert loaded.fit_settings == record["settings"]  # kept by a later save
    assert repr(loaded).endswith(
        f", written by hooklens {INSTALLED['hooklens']}, torch {INSTALLED['torch']})"
    )
    assert "written by" not in repr(lens)  # made here, not read from a file


def test_a_model_revision_given_or_recorded_by_the_config_is_kept(bridge, tmp_path):
    TunedLens.from_model(bridge, model_revision="v1.2").save(tmp_path / "given")
    loaded = TunedLens.load(tmp_path / "given", bridge)
    assert loaded.provenance["model_revision"] == "v1.2"

    class Config:
        _commit_hash = "0123abcd"

    class Hf:
        config = Config()

    class Model:
        original_model = Hf()

    assert provenance.model_revision(Model()) == "0123abcd"
    assert provenance.model_revision(object()) is None


def test_a_trained_lens_records_its_train_config(hooked, tmp_path):
    lens = TunedLens.from_model(hooked)
    config = TrainConfig(steps=2, lr=1e-3, checkpoint_every=100)
    train_lens(hooked, lens, _batches(), config, checkpoint_dir=tmp_path / "run", progress=False)
    assert lens.fit_settings["method"] == "train"
    assert lens.fit_settings["steps"] == 2 and lens.fit_settings["tokens"] == 32
    state = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    assert _versions(state["provenance"]) == INSTALLED
    assert state["provenance"]["settings"]["lr"] == 1e-3


def test_a_training_checkpoint_of_another_transformer_lens_warns_on_resume(
    hooked, tmp_path, monkeypatch
):
    config = TrainConfig(steps=2, lr=1e-3, checkpoint_every=1)
    run = tmp_path / "run"
    train_lens(hooked, TunedLens.from_model(hooked), _batches(), config, checkpoint_dir=run)
    _installed_elsewhere(monkeypatch, "transformer_lens", "99.1.0")
    with pytest.warns(ProvenanceWarning, match="transformer_lens 99.1.0 is installed"):
        train_lens(
            hooked, TunedLens.from_model(hooked), _batches(), config, checkpoint_dir=run,
            resume=True, progress=False,
        )  # fmt: skip


@pytest.mark.parametrize("suffix", [".pt", ""])
def test_a_jacobian_lens_file_records_provenance_and_the_fit(bridge, tmp_path, suffix):
    path = _jlens(bridge).save(tmp_path / f"jlens{suffix}")
    if suffix:
        record = torch.load(path, weights_only=True)[RECORD_KEY]["provenance"]
    else:
        record = json.loads((path / "config.json").read_text())["provenance"]
    assert _versions(record) == INSTALLED
    assert record["model_name"] == "tiny-llama"
    settings = {"max_seq_len": 8, "skip_first_positions": 1, "n_prompts": 2, "dim_batch": 4}
    assert record["settings"] == settings

    loaded = JacobianLens.load(path, bridge)
    assert loaded.provenance == record
    assert f"written by hooklens {INSTALLED['hooklens']}" in repr(loaded)


def test_a_jacobian_fit_checkpoint_records_provenance(bridge, tmp_path):
    checkpoint = tmp_path / "fit.pt"
    JacobianLens.fit(
        bridge, PROMPTS, max_seq_len=8, skip_first_positions=1, checkpoint=checkpoint,
        progress=False,
    )  # fmt: skip
    record = torch.load(checkpoint, weights_only=True)[FIT_RECORD_KEY]["provenance"]
    assert _versions(record) == INSTALLED and record["settings"]["max_seq_len"] == 8
    assert JacobianLens.load(checkpoint, bridge).provenance == record


def test_a_fit_checkpoint_of_another_transformers_warns_on_resume(bridge, tmp_path, monkeypatch):
    checkpoint = tmp_path / "fit.pt"
    fit = dict(max_seq_len=8, skip_first_positions=1, checkpoint=checkpoint, progress=False)
    JacobianLens.fit(bridge, PROMPTS[:1], **fit)
    _installed_elsewhere(monkeypatch, "transformers", "0.1.0")
    with pytest.warns(ProvenanceWarning, match=f"transformers {INSTALLED['transformers']}"):
        JacobianLens.fit(bridge, PROMPTS, **fit)


@pytest.mark.parametrize("package", ["transformers", "transformer_lens"])
def test_a_lens_of_another_major_minor_warns_once_naming_both(
    bridge, tmp_path, monkeypatch, package
):
    TunedLens.from_model(bridge).save(tmp_path / "lens")
    _jlens(bridge).save(tmp_path / "jlens.pt")
    _installed_elsewhere(monkeypatch, package, "77.3.1")
    with pytest.warns(ProvenanceWarning) as caught:
        TunedLens.load(tmp_path / "lens", bridge)
    (message,) = [str(w.message) for w in caught]
    assert f"written under {package} {INSTALLED[package]}" in message
    assert f"{package} 77.3.1 is installed" in message
    assert f"Install {package}=={INSTALLED[package]}" in message
    assert "fit or train the lens again" in message
    with warnings.catch_warnings():  # once: neither this lens again nor another file
        warnings.simplefilter("error")
        TunedLens.load(tmp_path / "lens", bridge)
        JacobianLens.load(tmp_path / "jlens.pt", bridge)


def test_another_patch_version_or_torch_does_not_warn(bridge, tmp_path, monkeypatch):
    TunedLens.from_model(bridge).save(tmp_path / "lens")
    major_minor = ".".join(INSTALLED["transformers"].split(".")[:2])
    _installed_elsewhere(monkeypatch, "transformers", f"{major_minor}.999+local")
    real = provenance.package_version
    monkeypatch.setattr(
        provenance, "package_version", lambda name: "0.0.1" if name == "torch" else real(name)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TunedLens.load(tmp_path / "lens", bridge)


def test_a_directory_without_provenance_loads_silently(bridge, tmp_path, monkeypatch):
    TunedLens.from_model(bridge).save(tmp_path / "lens")
    config_path = tmp_path / "lens" / "config.json"
    config = json.loads(config_path.read_text())
    del config["provenance"]  # as hooklens wrote it before provenance
    config["config_sha256"] = config_digest(config)
    config_path.write_text(json.dumps(config))
    _installed_elsewhere(monkeypatch, "transformers", "0.1.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = TunedLens.load(tmp_path / "lens", bridge)
    assert loaded.provenance is None and "written by" not in repr(loaded)


def test_a_jacobian_pt_without_provenance_loads_silently(bridge, tmp_path, monkeypatch):
    lens = _jlens(bridge)
    foreign = {  # the reference's keys alone, as TransformerLens writes them
        "J": {layer: lens.jacobian(layer) for layer in lens.fitted_layers},
        "n_prompts": 2,
        "source_layers": lens.fitted_layers,
        "d_model": 32,
        "metadata": {"model_name": "tiny-llama", "target_layer": 2},
    }
    torch.save(foreign, tmp_path / "reference.pt")
    _installed_elsewhere(monkeypatch, "transformer_lens", "0.1.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = JacobianLens.load(tmp_path / "reference.pt", bridge)
    assert loaded.provenance is None


def test_a_provenance_that_is_not_an_object_is_refused_by_key(bridge, tmp_path):
    from hooklens import LensFileError

    TunedLens.from_model(bridge).save(tmp_path / "lens")
    config_path = tmp_path / "lens" / "config.json"
    config = json.loads(config_path.read_text())
    config["provenance"] = "hooklens 0.1"
    config["config_sha256"] = config_digest(config)
    config_path.write_text(json.dumps(config))
    with pytest.raises(LensFileError, match="key 'provenance' should be an object"):
        TunedLens.load(tmp_path / "lens", bridge)
