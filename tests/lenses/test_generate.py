"""Lens.generate: decoding from a layer, batched with left padding, on the KV cache."""

from __future__ import annotations

import pytest
import torch

from hooklens import LogitLens, TunedLens

PROMPTS = [[5, 17, 33, 8, 41, 12, 9], [22, 7], [60, 3, 19, 44]]  # lengths 7, 2, 4


def model_greedy(model, prompt: list[int], n: int) -> list[int]:
    """The model's own greedy continuation: full forward each step, no padding, no cache."""
    tokens = torch.tensor([prompt])
    for _ in range(n):
        with torch.no_grad():
            next_token = model(tokens)[0, -1].argmax()
        tokens = torch.cat([tokens, next_token.view(1, 1)], dim=1)
    return tokens[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "kind", ["hooked-rms-processed", "hooked-ln", "bridge-llama", "bridge-gpt2"]
)
def test_last_layer_logit_lens_greedy_is_the_models_greedy(model_zoo, kind):
    model = model_zoo[kind]
    lens = LogitLens.from_model(model)
    out = lens.generate(model, -1, PROMPTS, do_sample=False, max_new_tokens=6)
    assert out.shape == (3, 7 + 6)
    for row, prompt in zip(out, PROMPTS, strict=True):
        assert row[7 - len(prompt) : 7].tolist() == prompt  # left-padded prompt kept
        assert row[7:].tolist() == model_greedy(model, prompt, 6)


def test_a_middle_layer_decodes_its_own_lens(model_zoo):
    """At layer 1 each step is the lens's argmax over the residual before block 1."""
    model = model_zoo["hooked-rms-processed"]
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        lens.layer_translators[1].weight.normal_(0, 0.3)
    out = lens.generate(model, 1, [PROMPTS[0]], do_sample=False, max_new_tokens=4)
    tokens = torch.tensor([PROMPTS[0]])
    for _ in range(4):
        _, cache = model.run_with_cache(tokens)
        expected = lens(cache["blocks.1.hook_resid_pre"][0, -1], 1).argmax()
        tokens = torch.cat([tokens, expected.view(1, 1)], dim=1)
    assert torch.equal(out, tokens)


def test_sampling_is_reproducible_with_a_generator(model_zoo):
    model = model_zoo["hooked-rms-processed"]
    lens = LogitLens.from_model(model)

    def sample(seed, temp=1.0):
        generator = torch.Generator().manual_seed(seed)
        return lens.generate(model, 2, PROMPTS, temp=temp, max_new_tokens=8, generator=generator)

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    cold = sample(0, temp=1e-4)  # temperature → 0 is greedy
    greedy = lens.generate(model, 2, PROMPTS, do_sample=False, max_new_tokens=8)
    assert torch.equal(cold, greedy)


def test_a_padded_tensor_with_its_mask_equals_the_list(model_zoo):
    model = model_zoo["hooked-rms-processed"]
    lens = LogitLens.from_model(model)
    from_lists = lens.generate(model, -1, PROMPTS, do_sample=False, max_new_tokens=3)
    tokens = from_lists[:, :7]
    mask = torch.tensor([[1] * 7, [0] * 5 + [1] * 2, [0] * 3 + [1] * 4])
    from_tensor = lens.generate(
        model, -1, tokens, do_sample=False, max_new_tokens=3, attention_mask=mask
    )
    assert torch.equal(from_tensor, from_lists)


def test_bad_requests_are_refused(model_zoo):
    model = model_zoo["hooked-rms-processed"]
    lens = LogitLens.from_model(model)
    with pytest.raises(ValueError, match="temp must be positive"):
        lens.generate(model, 1, PROMPTS, temp=0.0)
    with pytest.raises(ValueError, match="pad on the left"):
        lens.generate(model, 1, torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="at least one token"):
        lens.generate(model, 1, [[1, 2], []])
    with pytest.raises(IndexError):
        lens.generate(model, 9, PROMPTS)
    post = TunedLens.from_model(model, component="resid_post")
    with pytest.raises(ValueError, match="resid_pre"):
        post.generate(model, 1, PROMPTS)
    with pytest.raises(ValueError, match="another model"):
        lens.generate(model_zoo["hooked-ln"], 1, PROMPTS)


@pytest.mark.slow
def test_embedded_model_greedy_and_a_tuned_lens_at_a_middle_layer():
    import itertools

    from hooklens import models
    from hooklens.training.data import batches, load_texts, pack, split_texts
    from hooklens.training.fast_fit import fit_tuned_lens

    model = models.load("smollm2-135m")
    prompts = [
        "The capital of France is",
        "Once upon a",
        "Water boils at a temperature of one hundred",
    ]
    ids = [model.to_tokens(p)[0].tolist() for p in prompts]
    assert len({len(i) for i in ids}) == 3  # three lengths: left padding matters
    out = LogitLens.from_model(model).generate(
        model, -1, prompts, do_sample=False, max_new_tokens=8
    )
    for row, prompt in zip(out, ids, strict=True):
        assert row[-8:].tolist() == model_greedy(model, prompt, 8)

    texts = load_texts("wikipedia-summaries")["text"]
    chunks = pack(split_texts(texts, held_out=False), model.tokenizer, seq_len=512)
    tuned = fit_tuned_lens(model, itertools.islice(batches(chunks, 2), 2), progress=False)
    sampled = tuned.generate(
        model, 15, prompts, max_new_tokens=8, generator=torch.Generator().manual_seed(0)
    )
    text = model.to_string(sampled[:, -8:])
    print(text)
    assert len(text) == 3 and all(isinstance(t, str) and t for t in text)
