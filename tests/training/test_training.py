"""Training data and the closed-form (fast-fit) tuned lens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hooklens import LogitLens, PredictionTrajectory
from hooklens.training.data import batches, is_held_out, load_texts, pack, split_texts
from hooklens.training.fast_fit import LeastSquaresMoments, fit_tuned_lens
from tests.conftest import VOCAB

PARAGRAPHS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The Pacific is the largest and deepest of the world's five oceans.",
    "Ada Lovelace wrote what is often called the first computer program.",
]


def test_least_squares_recovers_an_exact_affine_map():
    generator = torch.Generator().manual_seed(0)
    d = 6
    matrix = torch.randn(d, d, generator=generator, dtype=torch.float64)
    offset = torch.randn(d, generator=generator, dtype=torch.float64)
    moments = LeastSquaresMoments(n_layers=1, d_model=d)
    for _ in range(3):
        x = torch.randn(200, d, generator=generator, dtype=torch.float64)
        y = x @ matrix.T + offset
        moments.add_targets(y)
        moments.update(0, x, y)
    fitted, fitted_offset = moments.solve(0, alpha=1e-12)
    torch.testing.assert_close(fitted, matrix, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted_offset, offset, atol=1e-4, rtol=1e-4)


def test_strong_ridge_pulls_toward_the_identity():
    generator = torch.Generator().manual_seed(1)
    moments = LeastSquaresMoments(n_layers=1, d_model=4)
    x = torch.randn(50, 4, generator=generator)
    y = 3 * x
    moments.add_targets(y)
    moments.update(0, x, y)
    fitted, _ = moments.solve(0, alpha=1e6)
    torch.testing.assert_close(fitted, torch.eye(4, dtype=torch.float64), atol=1e-3, rtol=0)


def _mean_forward_kl(lens, model, tokens) -> np.ndarray:
    logits, cache = model.run_with_cache(tokens)
    trajectory = PredictionTrajectory.from_lens_and_cache(lens, tokens, cache, logits)
    return trajectory.forward_kl().stats[:, :-1].mean(axis=(0, 2))  # per layer


@pytest.mark.parametrize("bias", [True, False])
def test_fast_fit_beats_the_logit_lens(hooked, bias):
    generator = torch.Generator().manual_seed(2)
    train = [torch.randint(4, VOCAB, (4, 16), generator=generator) for _ in range(4)]
    held_out = torch.randint(4, VOCAB, (4, 16), generator=generator)
    lens = fit_tuned_lens(hooked, train, bias=bias, progress=False)
    assert all((t.bias is not None) == bias for t in lens.layer_translators)
    fitted = _mean_forward_kl(lens, hooked, held_out)
    logit = _mean_forward_kl(LogitLens.from_model(hooked), hooked, held_out)
    assert fitted.mean() < logit.mean()


def test_packing_keeps_every_token_in_order(word_tokenizer):
    texts = ["w5 w6 w7", "w8 w9", "w4 w5 w6 w7", "w9"]
    chunks = list(pack(texts, word_tokenizer, seq_len=4, separator=1))
    flat = torch.cat(chunks).tolist()
    assert flat == [5, 6, 7, 1, 8, 9, 1, 4, 5, 6, 7, 1]  # the last, incomplete chunk dropped
    assert all(len(chunk) == 4 for chunk in chunks)
    grouped = list(batches(iter(chunks), batch_size=2))
    assert [tuple(b.shape) for b in grouped] == [(2, 4), (1, 4)]
    with pytest.raises(ValueError, match="seq_len"):
        next(pack(texts, word_tokenizer, seq_len=1))


def test_held_out_split_is_stable_and_disjoint():
    texts = [f"paragraph number {i}" for i in range(2000)]
    held = list(split_texts(texts, held_out=True))
    train = list(split_texts(texts, held_out=False))
    assert not set(held) & set(train) and len(held) + len(train) == len(texts)
    assert 0.02 < len(held) / len(texts) < 0.08
    assert [t for t in texts if is_held_out(t)] == held  # the same every time


def test_local_files_load_as_datasets(tmp_path):
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": p}) for p in PARAGRAPHS) + "\n")
    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(PARAGRAPHS) + "\n")
    assert load_texts(str(jsonl))["text"] == PARAGRAPHS
    assert load_texts(str(txt))["text"] == PARAGRAPHS
    with pytest.raises(FileNotFoundError, match="no data file"):
        load_texts(str(tmp_path / "missing.jsonl"))


def test_fast_fit_skips_the_head_and_fits_the_same_lens(hooked, monkeypatch):
    """On a HookedTransformer the fit stops after the last block (no logits), and the
    lens is bit-identical to one fitted from full forwards."""
    data = [
        torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)
    ]
    skipping = fit_tuned_lens(hooked, data, progress=False)
    run_with_cache, stops = hooked.run_with_cache, []

    def full_forward(*args, **kwargs):
        stops.append(kwargs.pop("stop_at_layer", None))
        return run_with_cache(*args, **kwargs)

    monkeypatch.setattr(hooked, "run_with_cache", full_forward)
    full = fit_tuned_lens(hooked, data, progress=False)
    assert stops == [hooked.cfg.n_layers] * len(data)
    for (name, a), b in zip(skipping.state_dict().items(), full.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.outside_annotations
def test_train_lens_refuses_a_lens_with_nothing_to_train(hooked, tmp_path):
    """Issue 23: a LogitLens reached torch's "optimizer got an empty parameter list"
    (after the checkpoint directory was claimed)."""
    from hooklens import InputError, InputTypeError, TunedLens
    from hooklens.training.loop import train_lens

    batches = [torch.randint(4, VOCAB, (2, 8))]
    folder = tmp_path / "run"
    with pytest.raises(InputError, match=r"a LogitLens has no parameters to train.*TunedLens"):
        train_lens(hooked, LogitLens.from_model(hooked), batches, checkpoint_dir=folder)
    frozen = TunedLens.from_model(hooked).requires_grad_(False)
    with pytest.raises(InputError, match=r"frozen \(requires_grad=False\)"):
        train_lens(hooked, frozen, batches, checkpoint_dir=folder)
    with pytest.raises(InputTypeError, match="must be a TunedLens"):
        train_lens(hooked, "lens", batches, checkpoint_dir=folder)  # type: ignore[arg-type]
    assert not folder.exists()  # refused before anything was written
