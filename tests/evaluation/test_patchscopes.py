"""The token-identity Patchscope's per-layer numbers on a sample of held-out positions."""

from __future__ import annotations

import pytest
import torch

from hooklens.causal import TargetPrompt, patchscope_log_probs
from hooklens.errors import InputError
from hooklens.evaluation import evaluate_patchscope
from tests.conftest import N_LAYERS, VOCAB


def _sequences(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (3, 7), generator=generator)


def test_reading_every_position_gives_the_mean_over_every_cell(model_zoo):
    """More positions than cells: every position with a next token, each KL(output ‖
    row) and top-1 agreement averaged exactly as computed from the log-probabilities."""
    model = model_zoo["bridge-llama"]
    sequences = _sequences()
    prompt = TargetPrompt(sequences[:1, :5], placeholder=3)
    result = evaluate_patchscope(model, sequences, positions=100, target=prompt, progress=False)
    assert result["positions"] == 3 * 6
    kls, agreements = [], []
    for row in sequences:
        log_probs = patchscope_log_probs(model, row, prompt, positions=range(6), progress=False)
        output = log_probs[-1]
        kls.append((output.exp() * (output - log_probs)).sum(-1))  # [layer + 1, 6]
        agreements.append((log_probs.argmax(-1) == output.argmax(-1)).double())
    expected_kl = torch.cat(kls, dim=1).double().mean(1)
    expected_agreement = torch.cat(agreements, dim=1).mean(1)
    metrics = result["metrics"]
    assert len(metrics["kl_to_output"]) == N_LAYERS + 1
    torch.testing.assert_close(
        torch.tensor(metrics["kl_to_output"], dtype=torch.float64),
        expected_kl,
        rtol=1e-4,
        atol=1e-5,
    )
    torch.testing.assert_close(
        torch.tensor(metrics["top1_agreement"], dtype=torch.float64),
        expected_agreement,
        rtol=0,
        atol=1e-6,
    )


def test_a_sample_is_seeded_and_the_size_asked_for(model_zoo):
    model = model_zoo["bridge-llama"]
    sequences = _sequences(1)
    prompt = TargetPrompt(sequences[:1, :5], placeholder=3)
    runs = [
        evaluate_patchscope(model, sequences, positions=5, target=prompt, seed=s, progress=False)
        for s in (0, 0, 1)
    ]
    assert [run["positions"] for run in runs] == [5, 5, 5]
    assert runs[0]["metrics"] == runs[1]["metrics"]
    assert runs[0]["metrics"] != runs[2]["metrics"]
    with pytest.raises(InputError, match="positions >= 1"):
        evaluate_patchscope(model, sequences, positions=0, target=prompt, progress=False)
