"""Bad inputs to lenses and trajectories: a clear hooklens error, or the right number.

Each test is one case a demanding user hit (issue 14): another model's cache or logits,
padded batches, ids out of range, a lens changed in place, and the clear-error list.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from hooklens import (
    InputError,
    InputTypeError,
    LayerIndexError,
    LensChangedError,
    LensMismatchError,
    LogitLens,
    TunedLens,
    get_residual,
)
from hooklens.trajectory import PredictionTrajectory, next_token_targets
from tests.conftest import N_LAYERS, VOCAB, make_hooked, randomised


@pytest.fixture
def ids():
    return torch.randint(4, VOCAB, (2, 9), generator=torch.Generator().manual_seed(11))


def _entropy64(lens, h: torch.Tensor, layer: int) -> np.ndarray:
    """Float64 reference: entropy of the lens's full distribution."""
    with torch.no_grad():
        log_probs = torch.log_softmax(lens(h, layer).double(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1).numpy()


# --- 1. a cache or logits from another model ---------------------------------------------


def test_a_deeper_models_cache_is_refused(hooked, ids):
    deeper = make_hooked("RMS", processing=True, n_layers=N_LAYERS + 1)
    logits, cache = deeper.run_with_cache(ids)
    lens = LogitLens.from_model(hooked)
    with pytest.raises(LensMismatchError, match="n_layers"):
        PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits)
    with pytest.raises(LensMismatchError, match="n_layers"):
        lens.log_probs(cache, 1)


def test_a_cache_without_its_model_but_with_extra_blocks_is_refused(hooked, ids):
    deeper = make_hooked("RMS", processing=True, n_layers=N_LAYERS + 1)
    logits, cache = deeper.run_with_cache(ids)
    plain = dict(cache.cache_dict)  # a dict of hook name → tensor knows no model
    with pytest.raises(LensMismatchError, match=f"has {N_LAYERS} blocks"):
        PredictionTrajectory.from_lens_and_cache(LogitLens.from_model(hooked), ids, plain, logits)


def test_a_same_size_model_with_other_weights_is_refused(hooked, ids):
    other = make_hooked("RMS", processing=True, seed=7)
    logits, cache = other.run_with_cache(ids)
    for lens in (LogitLens.from_model(hooked), TunedLens.from_model(hooked)):
        with pytest.raises(LensMismatchError, match="unembedding"):
            PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits)
        with pytest.raises(LensMismatchError, match="unembedding"):
            lens.log_probs(cache, 0)


def test_logits_of_another_run_are_refused(hooked, ids):
    _, cache = hooked.run_with_cache(ids)
    other_logits = hooked(ids.flip(-1))
    with pytest.raises(LensMismatchError, match="same run"):
        PredictionTrajectory.from_lens_and_cache(
            LogitLens.from_model(hooked), ids, cache, other_logits
        )


def test_a_second_copy_of_the_same_model_is_accepted(hooked, ids):
    twin = copy.deepcopy(hooked)
    logits, cache = twin.run_with_cache(ids)
    lens = LogitLens.from_model(hooked)
    traj = PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits)
    expected = _entropy64(lens, cache["blocks.1.hook_resid_pre"], 1)
    np.testing.assert_allclose(traj.entropy().stats[:, 1], expected, atol=1e-4)


# --- 2. padded batches ---------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_cells_are_nan_and_left_out_of_means(model_zoo, side):
    model = model_zoo["bridge-llama"]  # a bridge: this runs on TransformerLens 4.x too
    tokens = model.to_tokens(["w5 w6 w7 w8 w9", "w4 w7"], padding_side=side)
    pad = model.tokenizer.pad_token_id
    n_pad = 3
    short = 1
    logits, cache = model.run_with_cache(tokens)
    lens = LogitLens.from_model(model)
    traj = PredictionTrajectory.from_lens_and_cache(
        lens, tokens, cache, logits, targets=next_token_targets(tokens)
    )
    assert traj.attention_mask is not None
    padded = ~traj.attention_mask
    assert int(padded.sum()) == n_pad and bool((tokens[padded] == pad).all())
    entropy, ce = traj.entropy(), traj.cross_entropy()
    cells = padded[short].numpy()
    assert np.isnan(entropy.stats[short][:, cells]).all()
    assert np.isnan(ce.stats[short][:, cells]).all()
    real = ~cells
    assert not np.isnan(entropy.stats[short][:, real]).any()
    # A mean over the batch at a position padded in one sequence is the other's value.
    expected = _entropy64(lens, cache["blocks.2.hook_resid_pre"][0], 2)
    np.testing.assert_allclose(entropy.matrix[2, cells], expected[cells], atol=1e-4)
    # Nothing is scored against the pad token: the last real token of the short
    # sequence has no target when padding follows it.
    if side == "right":
        last_real = int(real.nonzero()[0][-1])
        assert traj.targets[short, last_real] == -1
    hover = entropy.heatmap().customdata
    assert any("1 of 2 sequences (1 padded)" in cell for row in hover for cell in row)
    assert "padded_positions=3" in repr(traj)


def test_an_explicit_attention_mask_wins_and_ones_keep_every_token(model_zoo):
    model = model_zoo["bridge-llama"]
    tokens = model.to_tokens(["w5 w6 w7 w8", "w9"])
    logits, cache = model.run_with_cache(tokens)
    lens = LogitLens.from_model(model)
    kept = PredictionTrajectory.from_lens_and_cache(
        lens, tokens, cache, logits, attention_mask=torch.ones_like(tokens)
    )
    assert not np.isnan(kept.entropy().stats).any()
    with pytest.raises(InputError, match="attention_mask is"):
        PredictionTrajectory.from_lens_and_cache(
            lens, tokens, cache, logits, attention_mask=torch.ones(1, 2)
        )


def test_next_token_targets_stop_before_padding():
    ids = torch.tensor([[5, 6, 7], [8, 3, 3]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert next_token_targets(ids, mask).tolist() == [[6, 7, -1], [-1, -1, -1]]


# --- 3. ids out of range -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, VOCAB])
def test_input_ids_out_of_range_are_refused_before_the_model_runs(hooked, bad):
    lens = LogitLens.from_model(hooked)
    ids = torch.tensor([5, bad, 6])
    with pytest.raises(InputError, match=f"0..{VOCAB - 1}"):
        PredictionTrajectory.from_lens_and_model(lens, hooked, ids)


def test_a_negative_input_id_in_a_cache_trajectory_says_to_use_a_mask(hooked, ids):
    logits, cache = hooked.run_with_cache(ids)
    marked = ids.clone()
    marked[1, -2:] = -1
    with pytest.raises(InputError, match="attention_mask"):
        PredictionTrajectory.from_lens_and_cache(
            LogitLens.from_model(hooked), marked, cache, logits
        )


# --- 5. a lens changed in place ------------------------------------------------------------


def test_a_lens_changed_in_place_is_refused_not_mixed(hooked, ids):
    logits, cache = hooked.run_with_cache(ids)
    lens = randomised(TunedLens.from_model(hooked))
    traj = PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits)
    logit = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(hooked), ids, cache, logits
    )
    traj.js_divergence(logit)  # fine before the change
    with torch.no_grad():
        lens[0].weight.add_(0.05)
    with pytest.raises(LensChangedError, match="new trajectory"):
        traj.js_divergence(logit)
    with pytest.raises(LensChangedError):
        logit.kl_divergence(traj)
    with pytest.raises(LensChangedError):
        traj.layer_log_probs(0)
    rebuilt = PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits)
    js = rebuilt.js_divergence(rebuilt).stats
    np.testing.assert_allclose(js, 0.0, atol=1e-6)


def test_an_optimiser_step_counts_as_a_change(hooked, ids):
    logits, cache = hooked.run_with_cache(ids)
    lens = TunedLens.from_model(hooked)
    traj = PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits)
    optimizer = torch.optim.SGD(lens.parameters(), lr=0.1)
    # Through the translator only: the shared model must collect no gradient.
    lens.transform_hidden(cache["blocks.0.hook_resid_pre"].detach(), 0).sum().backward()
    optimizer.step()
    with pytest.raises(LensChangedError):
        traj.layer_log_probs(1)


# --- the clear-error list ------------------------------------------------------------------


@pytest.mark.parametrize("layer", [np.int64(1), torch.tensor(1), np.int32(-3)])
def test_numpy_and_tensor_layer_indices_are_accepted(hooked, ids, layer):
    logits, cache = hooked.run_with_cache(ids)
    lens = LogitLens.from_model(hooked)
    expected = lens.log_probs(cache, int(layer))
    torch.testing.assert_close(lens.log_probs(cache, layer), expected)
    torch.testing.assert_close(get_residual(cache, layer), get_residual(cache, int(layer)))
    traj = PredictionTrajectory.from_lens_and_cache(lens, ids, cache, logits)
    torch.testing.assert_close(traj.layer_log_probs(layer), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.outside_annotations
@pytest.mark.parametrize("layer", [True, 1.0, "1", None])
def test_bool_float_and_text_layers_are_refused(hooked, ids, layer):
    _, cache = hooked.run_with_cache(ids)
    with pytest.raises(InputTypeError, match="layer index must be an int"):
        get_residual(cache, layer)
    with pytest.raises(InputTypeError, match="layer index must be an int"):
        LogitLens.from_model(hooked).log_probs(cache, layer)


def test_out_of_range_layers_are_a_layer_index_error(hooked, ids):
    _, cache = hooked.run_with_cache(ids)
    with pytest.raises(LayerIndexError, match=f"rows are 0..{N_LAYERS}"):
        get_residual(cache, N_LAYERS + 1)


@pytest.mark.outside_annotations
@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        (-5, InputError, "targets are"),
        ("full-5", InputError, r"-1 \(no target\)"),
        ("bool", InputTypeError, "bool mask"),
        ("float", InputTypeError, "integer token ids"),
        ("short", InputError, "targets are"),
    ],
)
def test_bad_targets_are_refused(hooked, ids, targets, error, match):
    logits, cache = hooked.run_with_cache(ids)
    value = {
        "full-5": torch.full_like(ids, -5),
        "bool": ids > 50,
        "float": ids.float(),
        "short": ids[:, :-1],
    }.get(targets, targets)
    with pytest.raises(error, match=match):
        PredictionTrajectory.from_lens_and_cache(
            LogitLens.from_model(hooked), ids, cache, logits, targets=value
        )


@pytest.mark.outside_annotations
@pytest.mark.parametrize(
    ("input_ids", "error", "match"),
    [
        ([[5, 6, 7], [8]], InputError, "rectangular"),
        ("w5 w6", InputTypeError, "tokenize it first"),
        (["w5", "w6"], InputTypeError, "tokenize it first"),
        (torch.tensor([[0.5, 1.0]]), InputTypeError, "integer token ids"),
    ],
)
def test_ragged_text_and_float_input_ids_are_refused(hooked, ids, input_ids, error, match):
    logits, cache = hooked.run_with_cache(ids)
    with pytest.raises(error, match=match):
        PredictionTrajectory.from_lens_and_cache(
            LogitLens.from_model(hooked), input_ids, cache, logits
        )


def test_more_tokens_than_the_context_are_refused(hooked):
    n_ctx = hooked.cfg.n_ctx
    ids = torch.full((n_ctx + 1,), 5)
    with pytest.raises(InputError, match=f"n_ctx={n_ctx}"):
        PredictionTrajectory.from_lens_and_model(LogitLens.from_model(hooked), hooked, ids)


def test_empty_text_is_refused(hooked):
    with pytest.raises(InputError, match="empty"):
        PredictionTrajectory.from_lens_and_model(LogitLens.from_model(hooked), hooked, "")


@pytest.mark.parametrize(
    ("topk", "error"),
    [
        (0, InputError),
        (-2, InputError),
        (VOCAB + 1, InputError),
        pytest.param(1.5, InputTypeError, marks=pytest.mark.outside_annotations),
    ],
)
def test_topk_must_be_between_one_and_the_vocabulary(hooked, ids, topk, error):
    logits, cache = hooked.run_with_cache(ids)
    with pytest.raises(error, match="topk"):
        PredictionTrajectory.from_lens_and_cache(
            LogitLens.from_model(hooked), ids, cache, logits, topk=topk
        )


def test_slice_sequence_refuses_a_negative_step(hooked, ids):
    logits, cache = hooked.run_with_cache(ids)
    traj = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(hooked), ids, cache, logits
    )
    with pytest.raises(InputError, match="positive step"):
        traj.slice_sequence(slice(None, None, -1))
    assert traj.slice_sequence(slice(0, None, 2)).num_tokens == math.ceil(ids.shape[-1] / 2)


@pytest.mark.outside_annotations
@pytest.mark.parametrize("units", ["furlongs", "probs", "Nats"])
def test_units_other_than_nats_or_bits_are_refused(hooked, ids, units):
    logits, cache = hooked.run_with_cache(ids)
    traj = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(hooked), ids, cache, logits, targets=next_token_targets(ids)
    )
    for statistic in (traj.entropy, traj.cross_entropy, traj.forward_kl):
        with pytest.raises(InputError, match="'nats' or 'bits'"):
            statistic(units=units)


def test_a_half_precision_lens_reads_a_float32_cache(hooked, ids):
    logits, cache = hooked.run_with_cache(ids)
    lens = randomised(TunedLens.from_model(hooked))
    half = copy.deepcopy(lens).half()
    got = PredictionTrajectory.from_lens_and_cache(half, ids, cache, logits).entropy().stats
    h = cache["blocks.1.hook_resid_pre"]
    np.testing.assert_allclose(got[:, 1], _entropy64(lens, h, 1), atol=2e-2)
    assert half(h, 1).dtype == h.dtype


def test_patching_from_another_models_cache_is_refused(hooked, ids):
    from hooklens.causal.interventions import patch

    other = make_hooked("RMS", processing=True, seed=7)
    _, source = other.run_with_cache(ids)
    with pytest.raises(LensMismatchError, match="source cache"):
        patch(hooked, "resid_pre", 1, source)
    _, own = copy.deepcopy(hooked).run_with_cache(ids)
    name, _ = patch(hooked, "resid_pre", 1, own)  # a copy of the same model is fine
    assert name == "blocks.1.hook_resid_pre"


def test_every_error_the_package_raises_by_name_is_a_hooklens_error():
    """The lenses guide's promise (docs/guides/lenses.md), kept by the source: a `raise`
    of a built-in error class anywhere in hooklens would escape `except HooklensError`.
    (KeyError stays for mappings, which callers catch as such; re-raising a caught error
    is not counted.)"""
    import ast
    from pathlib import Path

    import hooklens

    builtin = {"ValueError", "TypeError", "IndexError", "RuntimeError", "FileNotFoundError"}
    found = []
    for path in sorted(Path(hooklens.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", None)
                if name in builtin:
                    found.append(f"{path.name}:{node.lineno} raises {name}")
    assert found == []


def _classes_outside_errors_py() -> list[str]:
    """Exception and warning classes defined in a hooklens module other than errors.py."""
    import ast
    from pathlib import Path

    import hooklens
    import hooklens.errors

    ours = {name for name, value in vars(hooklens.errors).items() if isinstance(value, type)}
    suffixes = ("Error", "Exception", "Warning")
    package = Path(hooklens.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [getattr(b, "id", None) or getattr(b, "attr", "") for b in node.bases]
            if any(b in ours or b.endswith(suffixes) for b in bases):
                found.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name}")
    return found


def test_every_exception_and_warning_class_is_defined_in_errors():
    """One place to look: every exception and warning class of hooklens is in
    hooklens/errors.py (the modules that raised them first re-export them)."""
    assert _classes_outside_errors_py() == []
