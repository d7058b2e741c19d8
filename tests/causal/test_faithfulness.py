"""Lens faithfulness: each causal direction's effect on the lens and on the model, on tiny
models of both classes, checked against planted directions and float64 recomputations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hooklens import JacobianLens, LogitLens, TunedLens
from hooklens.causal.faithfulness import (
    FaithfulnessResult,
    LayerFaithfulness,
    direction_effects,
    faithfulness_figure,
    faithfulness_table,
    lens_faithfulness,
    spearman,
)
from hooklens.core import ModelAdapter
from hooklens.core.residuals import get_residual
from hooklens.errors import InputError, LayerIndexError, LensMismatchError
from tests.conftest import D_MODEL, N_LAYERS, VOCAB, make_hooked

KINDS = ["hooked-rms-processed", "bridge-llama"]


@pytest.fixture(params=KINDS)
def model(request, model_zoo):
    return model_zoo[request.param]


def _tokens(batch: int = 4, pos: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _orthonormal(k: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(D_MODEL, k, generator=generator))[0]


# --- Spearman's ρ ------------------------------------------------------------------------


def _hand_ranks(values: list[float]) -> list[float]:
    """1 + (# smaller) + ½ (# other equal): the average rank, counted pair by pair."""
    return [
        1 + sum(w < v for w in values) + 0.5 * (sum(w == v for w in values) - 1) for v in values
    ]


def _hand_spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _hand_ranks(x), _hand_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy)


def test_spearman_of_known_arrays_with_ties():
    # ranks [1, 2.5, 2.5, 4] and [1, 3, 2, 4]: ρ = 4.5 / √(4.5 · 5) = 3 / √10
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)
    assert spearman([3, 1, 2], [-30, -10, -20]) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 4, 9).astype(float).tolist()  # many ties
        y = rng.integers(0, 4, 9).astype(float).tolist()
        if len(set(x)) > 1 and len(set(y)) > 1:
            assert spearman(x, y) == pytest.approx(_hand_spearman(x, y), abs=1e-12)


def test_spearman_is_nan_without_a_ranking():
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(InputError, match="one length"):
        spearman([1, 2], [1, 2, 3])


# --- planted directions ------------------------------------------------------------------


def _planted_model():
    """A normless HookedTransformer in which no block reads residual directions e_0, e_1,
    e_2; the unembedding reads e_1 strongly, e_2 weakly and e_0 not at all."""
    model = make_hooked("LN", normalization_type=None, seed=5)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for block in model.blocks:
            for weight in (block.attn.W_Q, block.attn.W_K, block.attn.W_V):
                weight[:, :3] = 0
            block.mlp.W_in[:3] = 0
        model.W_E[:, :3] = torch.randn(VOCAB, 3, generator=generator)  # variance to remove
        model.unembed.W_U[0] = 0
        model.unembed.W_U[1] = 3 * torch.randn(VOCAB, generator=generator)
        model.unembed.W_U[2] = 0.5 * torch.randn(VOCAB, generator=generator)
    return model


@pytest.mark.parametrize("mode", ["mean", "zero"])
def test_a_direction_both_read_moves_both_and_one_neither_reads_moves_neither(mode):
    model = _planted_model()
    lens = LogitLens.from_model(model)
    basis = torch.eye(D_MODEL)[:, :3]  # e_0 (read by no one), e_1 (strongly), e_2 (weakly)
    lens_kl, model_kl = direction_effects(model, lens, _tokens(), 1, basis, mode=mode)
    assert lens_kl[0] < 1e-6 and model_kl[0] < 1e-6
    assert lens_kl[1] > lens_kl[2] > 1e-3 and model_kl[1] > model_kl[2] > 1e-3
    assert spearman(lens_kl, model_kl) == pytest.approx(1.0)


def test_at_the_final_residual_lens_and_model_effects_are_equal(model):
    result = lens_faithfulness(
        model, LogitLens.from_model(model), _tokens(), layers=-1, k=3, max_iter=5, progress=False
    )
    (row,) = result.layers
    assert row.layer == N_LAYERS and row.k == 3
    np.testing.assert_allclose(row.lens_effects, row.model_effects, rtol=1e-4, atol=1e-6)
    assert (row.model_effects > 0).all()


# --- numbers against a float64 recomputation ---------------------------------------------


def _reference_effects(model, lens, tokens, row, vectors, mode):
    """Each KL in float64 over the whole vocabulary, the ablation done by hand."""
    adapter = ModelAdapter(model)
    name = (
        adapter.final_hook_name if row == adapter.n_layers else adapter.hook_name("resid_pre", row)
    )
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        hidden = get_residual(cache, row, "resid_pre", adapter).double()
        clean_out = logits.double().log_softmax(-1)
        clean_lens = lens(hidden.float(), row).double().log_softmax(-1)
        lens_kl, model_kl = [], []
        for v in vectors.double().T:
            coefficient = hidden @ v  # [batch, pos]
            if mode == "mean":
                coefficient = coefficient - coefficient.mean()
            ablated = (hidden - coefficient[..., None] * v).float()
            out = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda a, hook, new=ablated: new)])
            out = out.double().log_softmax(-1)
            read = lens(ablated, row).double().log_softmax(-1)
            lens_kl.append((clean_lens.exp() * (clean_lens - read)).sum(-1).mean().item())
            model_kl.append((clean_out.exp() * (clean_out - out)).sum(-1).mean().item())
    return np.array(lens_kl), np.array(model_kl)


@pytest.mark.parametrize("mode", ["mean", "zero"])
@pytest.mark.parametrize("row", [1, N_LAYERS])
def test_effects_match_a_float64_reference(model, mode, row):
    tuned = TunedLens.from_model(model)
    with torch.no_grad():
        for param in tuned.parameters():
            param.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    tokens, vectors = _tokens(), _orthonormal(3, seed=row)
    for lens in (LogitLens.from_model(model), tuned):
        found = direction_effects(model, lens, tokens, row, vectors, mode=mode, batch_size=8)
        expected = _reference_effects(model, lens, tokens, row, vectors, mode)
        for got, want in zip(found, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_effects_are_token_means_over_batches_of_any_size(model):
    lens, tokens, vectors = LogitLens.from_model(model), _tokens(), _orthonormal(2)
    whole = direction_effects(model, lens, tokens, 2, vectors, mode="zero", batch_size=4)
    split = direction_effects(model, lens, tokens, 2, vectors, mode="zero", batch_size=1)
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# --- every lens, end to end --------------------------------------------------------------


def _lenses(model):
    generator = torch.Generator().manual_seed(3)
    tuned = TunedLens.from_model(model)
    with torch.no_grad():
        for param in tuned.parameters():
            param.normal_(0, 0.05, generator=generator)
    jacobians = {
        layer: torch.eye(D_MODEL) + 0.05 * torch.randn(D_MODEL, D_MODEL, generator=generator)
        for layer in range(N_LAYERS - 1)
    }
    return [LogitLens.from_model(model), tuned, JacobianLens.from_model(model, jacobians)]


def test_every_lens_gives_a_result_per_layer(model):
    tokens = _tokens(batch=4)
    for lens in _lenses(model):
        result = lens_faithfulness(
            model, lens, tokens, layers=[1, 2], k=2, max_iter=3, progress=False
        )
        assert [row.layer for row in result.layers] == [1, 2]
        assert result.lens == type(lens).__name__ and result.component == lens.component
        assert result.fit_tokens == result.eval_tokens == 2 * 7
        for row in result.layers:
            assert row.energies.shape == row.lens_effects.shape == row.model_effects.shape == (2,)
            assert np.isfinite(row.lens_effects).all() and (row.lens_effects >= 0).all()
            assert np.isfinite(row.model_effects).all() and (row.model_effects >= 0).all()
            assert row.vectors is not None and row.vectors.shape == (D_MODEL, 2)


def test_fit_tokens_leave_every_token_for_the_measurement(model_zoo):
    model = model_zoo["bridge-llama"]
    result = lens_faithfulness(
        model,
        LogitLens.from_model(model),
        _tokens(batch=1),
        layers=[2],
        k=1,
        fit_tokens=_tokens(batch=2, seed=1),
        max_iter=3,
        progress=False,
    )
    assert (result.fit_tokens, result.eval_tokens) == (14, 7)


# --- table, figure, JSON -----------------------------------------------------------------


def _result(lens: str, effects: dict[int, tuple[list[float], list[float]]]) -> FaithfulnessResult:
    layers = tuple(
        LayerFaithfulness(
            layer, np.array(lens_kl, float) * 2, np.array(lens_kl, float), np.array(model_kl, float)
        )
        for layer, (lens_kl, model_kl) in effects.items()
    )
    return FaithfulnessResult(lens, "tiny", layers, fit_tokens=10, eval_tokens=12)


def test_table_figure_and_json_say_what_was_measured():
    logit = _result("LogitLens", {6: ([1.0, 2.0, 3.0], [0.1, 0.3, 0.2]), 14: ([1, 1], [1, 2])})
    tuned = _result("TunedLens", {6: ([1.0, 2.0, 3.0], [0.1, 0.2, 0.3])})
    lines = faithfulness_table(logit, tuned).splitlines()
    assert lines[0] == "| layer | lens | k | Spearman ρ | mean lens KL | mean model KL |"
    assert lines[2:] == [
        "| 6 | LogitLens | 3 | +0.50 | 2 | 0.2 |",
        "| 6 | TunedLens | 3 | +1.00 | 2 | 0.2 |",
        "| 14 | LogitLens | 2 | n/a | 1 | 1.5 |",
    ]
    assert logit.table() == faithfulness_table(logit)
    assert logit[6].spearman == pytest.approx(0.5) and "ρ=+0.50" in repr(logit)

    figure = faithfulness_figure(logit, tuned)
    assert len(figure.data) == 3 and figure.layout.xaxis.type == "log"
    assert list(figure.data[0].x) == [1.0, 2.0, 3.0] and list(figure.data[0].y) == [0.1, 0.3, 0.2]
    assert logit.figure(log=False).layout.yaxis.type == "linear"

    data = json.loads(json.dumps(logit.to_dict()))
    assert data["layers"][0]["model_effects"] == [0.1, 0.3, 0.2]
    assert data["layers"][1]["spearman"] is None  # constant lens effects: no ranking
    assert data["units"] == "nats" and data["eval_tokens"] == 12
    assert json.loads(logit.to_json()) == data
    with pytest.raises(KeyError, match="layers are"):
        logit[3]


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.outside_annotations
def test_bad_requests_are_refused_before_any_work(model_zoo, word_tokenizer):
    from tests.conftest import make_bridge

    model = model_zoo["bridge-llama"]
    lens, tokens = LogitLens.from_model(model), _tokens()
    with pytest.raises(LayerIndexError, match="out of range"):
        lens_faithfulness(model, lens, tokens, layers=[N_LAYERS + 1], progress=False)
    with pytest.raises(InputError, match="d_model=32"):
        lens_faithfulness(model, lens, tokens, layers=[1], k=D_MODEL + 1, progress=False)
    with pytest.raises(InputError, match="at least 2 sequences"):
        lens_faithfulness(model, lens, tokens[:1], layers=[1], progress=False)
    with pytest.raises(InputError, match="mode must be one of"):
        lens_faithfulness(model, lens, tokens, layers=[1], mode="mean ", progress=False)
    with pytest.raises(InputError, match="layers is empty"):
        lens_faithfulness(model, lens, tokens, layers=[], progress=False)
    with pytest.raises(InputError, match="outside"):
        lens_faithfulness(model, lens, tokens + VOCAB, layers=[1], progress=False)
    other = make_bridge(word_tokenizer, "llama", seed=1)
    with pytest.raises(LensMismatchError, match="another model"):
        lens_faithfulness(other, lens, tokens, layers=[1], progress=False)
    with pytest.raises(InputError, match=r"\[d_model=32"):
        direction_effects(model, lens, tokens, 1, torch.eye(8))


def test_padded_tokens_are_refused_not_averaged_in(model_zoo):
    """Issue 23: padded positions were averaged into the lens and model effects, and
    pooled into the mean and resample ablations, without a word."""
    model = model_zoo["bridge-llama"]
    lens = LogitLens.from_model(model)
    texts = ["w5 w6 w7 w8 w9", "w4 w5", "w9 w8 w7 w6 w5", "w6 w7 w8"]
    padded = model.to_tokens(texts)  # right-padded with the pad token, w3
    pad_id = model.tokenizer.pad_token_id
    assert (padded == pad_id).any()
    common = dict(layers=[1], k=2, max_iter=2, progress=False)
    with pytest.raises(InputError, match=r"tokens are padded: 2 of its 4 sequences") as info:
        lens_faithfulness(model, lens, padded, **common)
    message = str(info.value)
    assert f"id {pad_id}" in message and "tokens[:, :3]" in message
    assert "attention_mask=torch.ones_like(tokens)" in message
    with pytest.raises(InputError, match="fit_tokens are padded"):
        lens_faithfulness(model, lens, padded[:, :3], fit_tokens=padded, **common)
    with pytest.raises(InputError, match="tokens are padded"):
        direction_effects(model, lens, padded, 1, _orthonormal(2))
    # A mask that marks padding is refused as well, pad tokens or not.
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with pytest.raises(InputError, match=r"attention_mask marks 2 padded position\(s\)"):
        lens_faithfulness(model, lens, _tokens(), attention_mask=mask, **common)
    with pytest.raises(InputError, match=r"attention_mask is \(4, 6\), but tokens are \(4, 7\)"):
        direction_effects(model, lens, _tokens(), 1, _orthonormal(1), attention_mask=mask[:, :6])
    # Unpadded rows, and pad-token ids declared real text, are measured as before.
    cut = padded[:, :3]
    result = lens_faithfulness(model, lens, cut, **common)
    declared = lens_faithfulness(
        model, lens, padded, attention_mask=torch.ones_like(padded), **common
    )
    assert result.eval_tokens == cut[2:].numel() and declared.eval_tokens == padded[2:].numel()
