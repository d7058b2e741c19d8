"""The greater-than task is well formed, and SmolLM2 does it far above chance."""

from __future__ import annotations

import pytest
import torch

from hooklens import LogitLens, models
from hooklens.causal.effects import LayerEffect, answer_log_prob_diff
from hooklens.causal.tasks import greater_than

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return models.load("smollm2-135m")


def test_greater_than_prompts_and_answer_sets(smollm2):
    tokenizer = smollm2.tokenizer
    task = greater_than(tokenizer, 12, seed=1)
    assert task.clean.shape == task.corrupted.shape == (12, 17)
    for prompt, targets, anti in zip(task.prompts, task.targets, task.anti_targets, strict=True):
        tens = int(prompt.split("year 17")[1][0])
        decode = lambda ids: {int(tokenizer.decode([i])) for i in ids.tolist() if i >= 0}  # noqa: E731
        assert decode(targets) == set(range(tens + 1, 10))
        assert decode(anti) == set(range(tens))
    assert tokenizer.decode(task.corrupted[0]).count("1701") == 1
    assert 0.45 < task.chance < 0.55


def test_smollm2_does_greater_than_above_chance_and_the_lens_sees_it_form(smollm2):
    task = greater_than(smollm2.tokenizer, 48)
    with torch.no_grad():
        clean = smollm2(task.clean)[:, -1]
        corrupted = smollm2(task.corrupted)[:, -1]
    assert task.accuracy(clean) >= 0.9 > task.chance
    assert task.accuracy(corrupted) < task.chance
    lens = LogitLens.from_model(smollm2)
    args = (task.targets, task.anti_targets)
    effect = LayerEffect(
        "clean − corrupted",
        answer_log_prob_diff(lens, smollm2, task.clean, *args)
        - answer_log_prob_diff(lens, smollm2, task.corrupted, *args),
    )
    assert abs(effect.mean[0]) < 1e-4  # layer 0 reads the answer position's own token
    assert effect.low[-1] > 1.0  # the output clearly prefers later years
