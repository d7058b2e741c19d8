"""Patchscopes: each cell is one patched forward of the target prompt, batched."""

from __future__ import annotations

import pytest
import torch

from hooklens import LogitLens, PredictionTrajectory
from hooklens.causal import (
    TargetPrompt,
    patchscope,
    patchscope_generate,
    patchscope_log_probs,
    target_prompt,
    token_identity_prompt,
)
from hooklens.core import ModelAdapter
from hooklens.errors import InputError
from tests import tiny
from tests.conftest import N_LAYERS, VOCAB


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    return tiny.word_tokenizer(tmp_path_factory.mktemp("words"), tiny.words_vocabulary())


def _float64(kind: str, tokenizer) -> torch.nn.Module:
    if kind == "hooked":
        return tiny.make_hooked("RMS", dtype=torch.float64)
    return tiny.make_bridge(tokenizer).to(torch.float64)


def _by_hand(model, prompt: TargetPrompt, component: str, layer: int, state) -> torch.Tensor:
    """One forward of the target prompt with `state` written at the placeholder."""
    adapter = ModelAdapter(model)

    def overwrite(value, hook=None):
        value = value.clone()
        value[0, prompt.placeholder] = state
        return value

    name = adapter.hook_name(component, layer)
    logits = model.run_with_hooks(prompt.ids, fwd_hooks=[(name, overwrite)])
    return torch.log_softmax(logits[0, prompt.placeholder], dim=-1)


@pytest.mark.parametrize(
    ("kind", "component"),
    [("hooked", "resid_pre"), ("hooked", "resid_post"), ("bridge", "resid_pre")],
)
def test_every_cell_equals_one_patched_forward_of_the_target(kind, component, words):
    """float64, batches of 2 positions; the hooked resid_pre case starts mid-network."""
    model = _float64(kind, words)
    generator = torch.Generator().manual_seed(0)
    source = torch.randint(4, VOCAB, (1, 5), generator=generator)
    prompt = TargetPrompt(torch.randint(4, VOCAB, (1, 6), generator=generator), placeholder=3)
    scope = patchscope_log_probs(
        model, source, prompt, component=component, batch_size=2, progress=False
    )

    logits, cache = model.run_with_cache(source)
    adapter = ModelAdapter(model)
    for layer in range(N_LAYERS):
        rows = scope[layer]
        for position in range(5):
            state = cache[adapter.hook_name(component, layer)][0, position]
            expected = _by_hand(model, prompt, component, layer, state)
            assert (rows[position] - expected).abs().max() < 1e-12, (layer, position)
    output = torch.log_softmax(logits[0], dim=-1)
    assert (scope[-1] - output).abs().max() < 1e-12


@pytest.mark.parametrize("kind", ["hooked", "bridge"])
def test_patching_a_state_back_where_it_came_from_changes_nothing(kind, words):
    """Target = the source prompt, placeholder = the source position, same layer, no
    mapping: the target's output there is the unpatched model's, at every layer."""
    model = _float64(kind, words)
    source = torch.randint(4, VOCAB, (1, 6), generator=torch.Generator().manual_seed(1))
    position = 4
    scope = patchscope_log_probs(model, source, TargetPrompt(source, position), progress=False)
    unpatched = torch.log_softmax(model(source)[0, position], dim=-1)
    for layer in range(N_LAYERS):
        assert (scope[layer, position] - unpatched).abs().max() < 1e-12


def test_a_patchscope_is_a_trajectory_like_any_other(model_zoo):
    model = model_zoo["bridge-llama"]
    tokens = torch.randint(4, VOCAB, (1, 7), generator=torch.Generator().manual_seed(2))
    scope = patchscope(model, tokens, TargetPrompt(tokens[:, :4], -1), progress=False)
    logits, cache = model.run_with_cache(tokens)
    lens = PredictionTrajectory.from_lens_and_cache(
        LogitLens.from_model(model), tokens, cache, logits
    )
    assert scope.num_layers == lens.num_layers and scope.num_tokens == 7
    assert scope.kl_divergence(lens).stats.shape == (1, N_LAYERS + 1, 7)
    assert abs(scope.forward_kl().stats[0, -1]).max() < 1e-5  # the last row is the output
    assert (
        scope.cross_entropy().stats[0, :, -1].tolist()
        != scope.cross_entropy().stats[0, :, -1].tolist()
    )


def test_target_prompts_find_their_placeholder(words):
    model = tiny.make_bridge(words)
    identity = token_identity_prompt(model)
    assert words.decode([int(identity.ids[0, identity.placeholder])]) == "?"
    marked = target_prompt(model, "The cat sat on the mat and purred", marker="mat")
    assert words.decode([int(marked.ids[0, marked.placeholder])]) == "mat"
    assert marked.placeholder == model.to_tokens("The cat sat on the mat").shape[-1] - 1
    with pytest.raises(InputError, match="exactly once"):
        target_prompt(model, "mat and mat", marker="mat")
    with pytest.raises(InputError, match="outside"):
        TargetPrompt(identity.ids, placeholder=99)


def test_patchscope_refuses_what_it_cannot_read(model_zoo, words):
    model = model_zoo["bridge-llama"]
    tokens = torch.randint(4, VOCAB, (1, 4), generator=torch.Generator().manual_seed(3))
    prompt = TargetPrompt(tokens, -1)
    with pytest.raises(InputError, match="target_layer 7 is out of range"):
        patchscope(model, tokens, prompt, target_layer=7, progress=False)
    other = tiny.make_bridge(words)  # a vocabulary of another size
    if ModelAdapter(other).d_vocab != ModelAdapter(model).d_vocab:
        with pytest.raises(InputError, match="vocabulary"):
            patchscope(model, tokens, prompt, target_model=other, progress=False)
    with pytest.raises(InputError, match="positions must be"):
        patchscope_log_probs(model, tokens, prompt, positions=[4], progress=False)


@pytest.mark.parametrize("kind", ["hooked", "bridge"])
def test_chosen_positions_are_those_rows_of_the_whole_reading(kind, words):
    """`positions=[4, 0, -1]` reads those cells (the output row too), in that order."""
    model = _float64(kind, words)
    source = torch.randint(4, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    prompt = TargetPrompt(source[:, :4], placeholder=2)
    whole = patchscope_log_probs(model, source, prompt, progress=False)
    chosen = patchscope_log_probs(model, source, prompt, positions=[4, 0, -1], progress=False)
    torch.testing.assert_close(chosen, whole[:, [4, 0, 5]], rtol=0, atol=1e-12)
    trajectory = patchscope(model, source, prompt, positions=[4, 0, -1], progress=False)
    assert trajectory.input_ids.tolist() == [source[0, [4, 0, 5]].tolist()]
    assert trajectory.targets.tolist() == [[int(source[0, 5]), int(source[0, 1]), -1]]


def _greedy(model, tokens: torch.Tensor, n: int) -> list[int]:
    out = []
    for _ in range(n):
        token = int(model(tokens)[0, -1].argmax())
        out.append(token)
        tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)
    return out


@pytest.mark.parametrize(
    ("kind", "use_cache"), [("hooked", True), ("hooked", False), ("bridge", None)]
)
def test_generating_after_a_state_patched_back_in_place_is_the_models_own_continuation(
    kind, use_cache, words
):
    model = _float64(kind, words)
    source = torch.randint(4, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    said = patchscope_generate(
        model, source, TargetPrompt(source, -1), max_new_tokens=4, use_cache=use_cache
    )
    assert said.shape == (N_LAYERS, 4)
    expected = _greedy(model, source, 4)
    assert all(row == expected for row in said.tolist())


def test_the_key_value_cache_keeps_the_patch(words):
    """A real patch (another prompt, a fixed layer): cached steps say what reruns say."""
    model = _float64("hooked", words)
    generator = torch.Generator().manual_seed(5)
    source = torch.randint(4, VOCAB, (1, 5), generator=generator)
    prompt = TargetPrompt(torch.randint(4, VOCAB, (1, 4), generator=generator), placeholder=1)
    runs = [
        patchscope_generate(
            model, source, prompt, target_layer=1, max_new_tokens=5, use_cache=use_cache
        )
        for use_cache in (True, False)
    ]
    assert torch.equal(*runs)
    unpatched = _greedy(model, prompt.ids, 5)
    assert any(row != unpatched for row in runs[0].tolist())  # the patch changed something
