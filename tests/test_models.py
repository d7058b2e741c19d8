"""Model names other than the embedded ones go to TransformerLens's hub loaders."""

from __future__ import annotations

import os

import pytest
from transformer_lens import HookedTransformer
from transformer_lens.model_bridge import TransformerBridge

from hooklens import models


@pytest.mark.parametrize(
    ("processing", "loader"),
    [
        (None, "from_pretrained"),
        (True, "from_pretrained"),
        (False, "from_pretrained_no_processing"),
    ],
)
def test_hub_names_use_hooked_transformer_loaders(monkeypatch, processing, loader):
    calls = []
    for name in ("from_pretrained", "from_pretrained_no_processing"):
        monkeypatch.setattr(
            HookedTransformer,
            name,
            classmethod(lambda cls, model_name, _n=name, **kw: calls.append((_n, model_name))),
        )
    models.load("gpt2", processing=processing)
    assert calls == [(loader, "gpt2")]


def test_hub_names_boot_a_bridge(monkeypatch):
    calls = []
    monkeypatch.setattr(
        TransformerBridge,
        "boot_transformers",
        classmethod(lambda cls, name, **kw: calls.append((name, kw["hf_model"]))),
    )
    models.load("EleutherAI/pythia-14m", model_class="bridge")
    assert calls == [("EleutherAI/pythia-14m", None)]


def test_offline_hub_load_fails_with_the_loaders_error():
    """Offline (as in CI), a hub name fails inside Hugging Face, not with a hooklens bug."""
    with pytest.raises((OSError, ValueError)):
        models.load("EleutherAI/pythia-14m", model_class="bridge")


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
