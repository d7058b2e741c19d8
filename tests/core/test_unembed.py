"""Chunked unembedding equals the unchunked one."""

from __future__ import annotations

import pytest
import torch

from hooklens import Unembed
from tests.conftest import D_MODEL, VOCAB


@pytest.fixture
def hidden():
    return torch.randn(2, 5, D_MODEL, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("chunk_size", [1, 7, 32, VOCAB, 10 * VOCAB])
def test_chunked_logsumexp_equals_unchunked(any_model, hidden, chunk_size):
    unembed = Unembed.from_model(any_model)
    expected = torch.logsumexp(unembed(hidden), dim=-1)
    torch.testing.assert_close(unembed.logsumexp(hidden, chunk_size), expected)


@pytest.mark.parametrize("chunk_size", [7, 32])
def test_chunked_log_probs_equal_unchunked(any_model, hidden, chunk_size):
    unembed = Unembed.from_model(any_model)
    chunks = list(unembed.log_prob_chunks(hidden, chunk_size))
    assert len(chunks) == -(-VOCAB // chunk_size)
    assert all(chunk.shape[-1] <= chunk_size for _, chunk in chunks)
    joined = torch.cat([chunk for _, chunk in chunks], dim=-1)
    torch.testing.assert_close(joined, unembed.log_probs(hidden))
    assert [vocab.start for vocab, _ in chunks] == list(range(0, VOCAB, chunk_size))


def test_unembed_reproduces_the_model_head(any_model, tokens):
    logits, cache = any_model.run_with_cache(tokens)
    unembed = Unembed.from_model(any_model)
    final = cache[f"blocks.{any_model.cfg.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(unembed(final), logits, atol=1e-4, rtol=1e-4)


def test_softcap_bounds_the_logits(model_zoo):
    unembed = Unembed.from_model(model_zoo["bridge-gemma2"])
    logits = unembed(100 * torch.randn(4, D_MODEL))
    assert logits.abs().max() <= 3.0


@pytest.mark.parametrize("bad", [0, -3, pytest.param(2.5, marks=pytest.mark.outside_annotations)])
def test_bad_chunk_size_is_refused(hooked, bad):
    with pytest.raises(ValueError, match="chunk_size"):
        Unembed.from_model(hooked, chunk_size=bad)


def test_repr_is_informative(hooked):
    assert repr(Unembed.from_model(hooked)) == (
        f"Unembed(d_model={D_MODEL}, d_vocab={VOCAB}, norm=RMSNormPre, chunk_size=8192)"
    )
