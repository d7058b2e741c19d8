"""The dequantised embedded model is cached on disk and reloads identically."""

from __future__ import annotations

import pytest
import torch

from hooklens import models

pytestmark = pytest.mark.slow


def test_cached_model_equals_the_dequantised_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKLENS_CACHE", str(tmp_path))
    models._embedded_hf_model.cache_clear()
    try:
        fresh, fresh_tokenizer = models._embedded_hf_model("smollm2-135m")
        assert (tmp_path / "smollm2-135m" / "model.safetensors").is_file()
        models._embedded_hf_model.cache_clear()
        cached, cached_tokenizer = models._embedded_hf_model("smollm2-135m")
    finally:
        models._embedded_hf_model.cache_clear()
    assert cached is not fresh
    fresh_state, cached_state = fresh.state_dict(), cached.state_dict()
    assert fresh_state.keys() == cached_state.keys()
    for name, tensor in fresh_state.items():
        assert torch.equal(tensor, cached_state[name]), name
    text = "Don’t stop\\nnow, 42 times"
    assert cached_tokenizer(text)["input_ids"] == fresh_tokenizer(text)["input_ids"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m"]  # no leftovers
