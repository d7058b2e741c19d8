"""The command-line tests' model: a tiny TransformerBridge that `models.load` returns."""

from __future__ import annotations

import pytest

from hooklens import models
from tests.conftest import make_bridge


@pytest.fixture(scope="module")
def model(word_tokenizer):
    return make_bridge(word_tokenizer, "llama")


@pytest.fixture
def loads(monkeypatch, model):
    """`models.load` returns the tiny bridge, whatever name it is given (a module that
    records the names asked for defines its own)."""
    monkeypatch.setattr(models, "load", lambda name, **kwargs: model)
