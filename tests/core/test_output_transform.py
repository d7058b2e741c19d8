"""Families that scale or cap their logits after W_U: a lens's output row is the model's,
and a transform hooklens cannot read is refused by name before any statistic."""

from __future__ import annotations

import pytest
import torch

from hooklens import LogitLens, ModelAdapter, PredictionTrajectory, UnsupportedModelError
from hooklens.core import Unembed
from tests.tiny import SCALED_LOGITS, make_bridge

IDS = torch.tensor([[5, 17, 33, 2, 71, 40, 9]])  # no pad id: Cohere zeroes its embedding
FAMILIES = ["gemma2", *SCALED_LOGITS]
# TransformerLens's compatibility mode fails on Falcon-H1's Mamba mixers itself
# (a shape error inside the bridge), so that family runs raw only.
CASES = [
    (family, compat)
    for family in FAMILIES
    for compat in (False, True)
    if (family, compat) != ("falcon_h1", True)
]


@pytest.fixture(scope="module")
def bridges(word_tokenizer):
    return {case: make_bridge(word_tokenizer, case[0], processing=case[1]) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'compat' if c[1] else 'raw'}")
def test_the_lens_output_row_is_the_models(bridges, case):
    bridge = bridges[case]
    logits, cache = bridge.run_with_cache(IDS)
    final = cache[ModelAdapter(bridge).final_hook_name]
    torch.testing.assert_close(Unembed.from_model(bridge)(final), logits, atol=1e-5, rtol=1e-5)
    # The trajectory's logits check (which refused these families before) passes, and
    # the last layer's distribution is the model's.
    trajectory = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(bridge), IDS, cache, logits
    )
    torch.testing.assert_close(
        trajectory.layer_log_probs(-1).double(),
        torch.log_softmax(logits.double(), dim=-1),
        atol=1e-4,
        rtol=0,
    )


def test_the_scale_is_read_where_the_forward_reads_it(bridges):
    # TransformerLens folds Cohere's scale into W_U in compatibility mode (and sets the
    # module's logit_scale to 1); 3.9's own apply_output_logits_transform still scales.
    assert ModelAdapter(bridges["cohere", False]).logit_scale == 0.25
    assert ModelAdapter(bridges["cohere", True]).logit_scale == 1.0
    assert ModelAdapter(bridges["granite", True]).logit_scale == 0.25  # 1 / logits_scaling
    assert ModelAdapter(bridges["falcon_h1", False]).logit_scale == pytest.approx(0.3)
    assert ModelAdapter(bridges["gemma3", False]).output_transform.softcap == 3.0
    assert "logit_scale=0.25" in repr(Unembed.from_model(bridges["granite", False]))


def test_the_fingerprint_includes_the_scale(word_tokenizer):
    bridge = make_bridge(word_tokenizer, "granite")
    before = ModelAdapter(bridge).unembedding_hash()
    bridge.original_model.config.logits_scaling = 2.0
    assert ModelAdapter(bridge).unembedding_hash() != before


@pytest.fixture
def llama(word_tokenizer):
    return make_bridge(word_tokenizer, "llama")


def test_an_unknown_adapter_transform_is_refused_by_name(llama):
    adapter = llama.adapter
    adapter.__class__ = type(
        "DoublingAdapter",
        (type(adapter),),
        {"apply_output_logits_transform": lambda self, logits: logits * 2},
    )
    with pytest.raises(UnsupportedModelError, match=r"LlamaForCausalLM.*scales the logits by 2"):
        LogitLens.from_model(llama)


def test_transformer_lens_own_refusal_is_passed_on_by_name(llama):
    def refuse():
        raise ValueError("remote-code logit_scale semantics")

    llama.adapter.validate_output_logits_transform = refuse
    with pytest.raises(UnsupportedModelError, match=r"LlamaForCausalLM.*remote-code"):
        LogitLens.from_model(llama)


def test_a_config_field_that_transforms_logits_is_refused(llama):
    llama.original_model.config.dim_model_base = 8  # MiniCPM's width scaling
    with pytest.raises(UnsupportedModelError, match="dim_model_base=8"):
        Unembed.from_model(llama)
