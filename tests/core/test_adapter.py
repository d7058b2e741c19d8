"""The adapter reads sizes, hooks, unembedding and weight processing off both model classes."""

from __future__ import annotations

import copy
import importlib
import warnings

import pytest
import torch

from hooklens import ModelAdapter
from hooklens.core.fingerprint import fingerprint_differences
from tests.conftest import D_MODEL, N_LAYERS, VOCAB


def test_sizes_tokenizer_and_hook_names(any_model):
    adapter = ModelAdapter(any_model)
    assert (adapter.n_layers, adapter.d_model, adapter.d_vocab) == (N_LAYERS, D_MODEL, VOCAB)
    assert adapter.W_U.shape == (D_MODEL, VOCAB)
    assert adapter.hook_name("resid_mid", 2) == "blocks.2.hook_resid_mid"
    assert adapter.final_hook_name == f"blocks.{N_LAYERS - 1}.hook_resid_post"
    hook_points = set(any_model.hook_dict)
    for component in ("resid_pre", "resid_mid", "resid_post"):
        assert set(adapter.residual_hook_names(component)) <= hook_points


def test_bridge_exposes_its_tokenizer(model_zoo, word_tokenizer):
    assert ModelAdapter(model_zoo["bridge-llama"]).tokenizer.vocab == word_tokenizer.vocab


def test_softcap_is_read_from_either_config(model_zoo):
    assert ModelAdapter(model_zoo["hooked-softcap"]).logit_softcap == 2.0
    assert ModelAdapter(model_zoo["bridge-gemma2"]).logit_softcap == 3.0
    assert ModelAdapter(model_zoo["hooked-rms"]).logit_softcap is None


def test_other_model_types_are_refused():
    with pytest.raises(TypeError, match="HookedTransformer or a TransformerBridge"):
        ModelAdapter(torch.nn.Linear(3, 3))


def test_out_of_range_block_is_refused(hooked):
    with pytest.raises(IndexError, match=f"blocks 0..{N_LAYERS - 1}"):
        ModelAdapter(hooked).hook_name("resid_pre", N_LAYERS)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("hooked-rms", (False, False, False)),
        ("hooked-rms-processed", (True, False, True)),  # RMS models are never centred
        ("hooked-ln", (False, False, False)),
        ("hooked-ln-processed", (True, True, True)),
        ("bridge-llama", (False, False, False)),
        ("bridge-llama-compat", (True, False, True)),
        ("bridge-gpt2", (False, False, False)),
        ("bridge-gpt2-compat", (True, True, True)),
    ],
)
def test_weight_processing_is_detected(model_zoo, kind, expected):
    processing = ModelAdapter(model_zoo[kind]).processing
    assert (processing.fold_ln, processing.center_writing_weights, processing.center_unembed) == (
        expected
    )


def test_unembedding_hash_covers_every_entry(hooked):
    """The reference hashed only corners of W_U; one changed middle entry must show."""
    base = ModelAdapter(hooked).unembedding_hash()
    for tensor_name, index in [("W_U", (D_MODEL // 2, VOCAB // 2)), ("b_U", (VOCAB // 2,))]:
        changed = copy.deepcopy(hooked)
        with torch.no_grad():
            getattr(changed, tensor_name)[index] += 0.5
        assert ModelAdapter(changed).unembedding_hash() != base, tensor_name


def test_final_norm_gain_is_part_of_the_hash(model_zoo):
    model = copy.deepcopy(model_zoo["hooked-rms"])
    base = ModelAdapter(model).unembedding_hash()
    with torch.no_grad():
        model.ln_final.w[D_MODEL // 2] += 0.5
    assert ModelAdapter(model).unembedding_hash() != base


def test_hash_agrees_between_float32_and_bfloat16_loads(hooked):
    halved = copy.deepcopy(hooked).to(torch.bfloat16)
    assert ModelAdapter(halved).unembedding_hash() == ModelAdapter(hooked).unembedding_hash()


def test_fingerprint_differences_name_each_field(model_zoo):
    raw = ModelAdapter(model_zoo["hooked-rms"]).fingerprint
    processed = ModelAdapter(model_zoo["hooked-rms-processed"]).fingerprint
    found = fingerprint_differences(raw, processed)
    assert any(line.startswith("weight processing fold_ln") for line in found)
    assert any(line.startswith("weight processing center_unembed") for line in found)
    assert any(line.startswith("unembedding") for line in found)
    assert fingerprint_differences(raw, raw) == []


def test_what_the_model_class_can_do_is_the_adapters_to_say(any_model, tokens):
    adapter = ModelAdapter(any_model)
    hooked = adapter.kind == "HookedTransformer"
    capabilities = (adapter.can_stop_at_layer, adapter.can_start_at_layer, adapter.has_kv_cache)
    assert capabilities == (hooked, hooked, hooked)
    if adapter.can_stop_at_layer:
        _, cache = any_model.run_with_cache(tokens)
        stopped = any_model(tokens, stop_at_layer=1)
        torch.testing.assert_close(stopped, cache["blocks.1.hook_resid_pre"])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("hooklens.model", "hooklens.core.adapter"),
        ("hooklens.residuals", "hooklens.core.residuals"),
        ("hooklens.unembed", "hooklens.core.unembed"),
        ("hooklens.inversion", "hooklens.core.inversion"),
        ("hooklens.precision", "hooklens.core.precision"),
        ("hooklens.allocator", "hooklens.core.precision"),
        ("hooklens.training.loss", "hooklens.core.chunked_kl"),
        ("hooklens.training.distributed", "hooklens.core.distributed"),
        ("hooklens.generation", "hooklens.lenses._generate"),
        ("hooklens.validation", "hooklens._checks"),
    ],
)
def test_old_module_paths_are_the_moved_modules(old, new):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert importlib.import_module(old) is importlib.import_module(new)
