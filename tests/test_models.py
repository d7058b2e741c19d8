"""Model names other than the embedded ones go to TransformerLens's hub loaders."""

from __future__ import annotations

import os

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from hooklens import models
from hooklens.errors import ModelClassUnavailableError
from tests.conftest import skip_without_hooked_transformer

MODEL = torch.nn.Module()  # what the stubbed loaders return (a model is a torch Module)


@pytest.mark.parametrize(
    ("processing", "loader"),
    [
        (None, "from_pretrained"),
        (True, "from_pretrained"),
        (False, "from_pretrained_no_processing"),
    ],
)
def test_hub_names_use_hooked_transformer_loaders(monkeypatch, processing, loader):
    skip_without_hooked_transformer()
    from transformer_lens import HookedTransformer

    calls = []
    for name in ("from_pretrained", "from_pretrained_no_processing"):
        monkeypatch.setattr(
            HookedTransformer,
            name,
            classmethod(
                lambda cls, model_name, _n=name, **kw: calls.append((_n, model_name)) or MODEL
            ),
        )
    models.load("gpt2", processing=processing)
    assert calls == [(loader, "gpt2")]


def test_hub_names_boot_a_bridge(monkeypatch):
    calls = []
    monkeypatch.setattr(
        TransformerBridge,
        "boot_transformers",
        classmethod(lambda cls, name, **kw: calls.append((name, kw["hf_model"])) or MODEL),
    )
    models.load("EleutherAI/pythia-14m", model_class="bridge")
    assert calls == [("EleutherAI/pythia-14m", None)]


def test_offline_hub_load_fails_with_the_loaders_error():
    """Offline (as in CI), a hub name fails inside Hugging Face, not with a hooklens bug."""
    with pytest.raises((OSError, ValueError)):
        models.load("EleutherAI/pythia-14m", model_class="bridge")


@pytest.mark.outside_annotations
def test_unknown_model_class_is_refused():
    with pytest.raises(ValueError, match="'hooked' or 'bridge'"):
        models.load("smollm2-135m", model_class="hf")


def test_embedded_model_folder_holds_the_gguf():
    folder = models.embedded_model_dir()
    assert models.EMBEDDED_MODELS["smollm2-135m"].gguf_file in os.listdir(folder)


def test_choose_falls_back_to_the_embedded_model_offline(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.warns(UserWarning, match="cannot be reached.*'smollm2-135m'"):
        assert models.choose("gpt2") == "smollm2-135m"
    assert models.choose("SmolLM2-135M") == "SmolLM2-135M"  # embedded: no network needed


def test_choose_keeps_a_hub_name_online(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: True)
    assert models.choose("gpt2") == "gpt2"


def test_hub_reachable_respects_offline_mode(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("offline mode must not touch the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models.socket, "create_connection", refuse)
    assert models.hub_reachable() is False


def test_default_model_class_is_one_the_installed_transformer_lens_has():
    try:
        from transformer_lens import HookedTransformer  # noqa: F401

        expected = "hooked"
    except ImportError:  # TransformerLens 4.x
        expected = "bridge"
    assert models.resolve_model_class() == expected


def test_without_hooked_transformer_the_bridge_is_the_default(monkeypatch):
    """TransformerLens 4.x: hub names boot a bridge, and "hooked" says what to do."""
    monkeypatch.setattr(models, "has_hooked_transformer", lambda: False)
    calls = []
    monkeypatch.setattr(
        TransformerBridge,
        "boot_transformers",
        classmethod(lambda cls, name, **kw: calls.append(name) or MODEL),
    )
    models.load("gpt2")
    assert calls == ["gpt2"]
    with pytest.raises(ModelClassUnavailableError, match=r"4\.0 removed.*model_class='bridge'"):
        models.load("gpt2", model_class="hooked")
    with pytest.raises(ImportError):  # ported `except ImportError` code still catches it
        models.resolve_model_class("hooked")


@pytest.mark.skipif(models.has_hooked_transformer(), reason="TransformerLens 3.x has it")
def test_hooked_on_transformer_lens_4_says_it_was_removed_and_what_to_use():
    """Runs in .venv-tl4 (TransformerLens 4.x), against the real removal."""
    with pytest.raises(ModelClassUnavailableError, match=r"4\.0 removed.*model_class='bridge'"):
        models.load("smollm2-135m", model_class="hooked")
    assert models.resolve_model_class() == "bridge"
