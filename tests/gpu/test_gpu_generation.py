"""`Lens.generate` on the device: greedy decoding equals the CPU's for every lens and is
the model's own at the last layer; sampling with a generator on the device (torch's
sampler takes no CPU generator for a GPU tensor) is reproducible."""

from __future__ import annotations

import pytest
import torch

from hooklens import LogitLens
from tests.devices.test_device_discipline import _lenses

pytestmark = pytest.mark.cuda

PROMPTS = [[5, 17, 33, 8, 41, 12, 9], [22, 7], [60, 3, 19, 44]]  # lengths 7, 2, 4


def _model_greedy(model, prompt: list[int], n: int, device) -> list[int]:
    """The model's own greedy continuation: a whole forward each step, no padding."""
    tokens = torch.tensor([prompt], device=device)
    for _ in range(n):
        with torch.no_grad():
            next_token = model(tokens)[0, -1].argmax()
        tokens = torch.cat([tokens, next_token.view(1, 1)], dim=1)
    return tokens[0, len(prompt) :].tolist()


def test_greedy_decoding_on_the_device_equals_the_cpus(on_device, on_cpu, device):
    for lens, reference in zip(_lenses(on_device), _lenses(on_cpu), strict=True):
        for layer in (1, -1):
            out = lens.generate(on_device, layer, PROMPTS, do_sample=False, max_new_tokens=6)
            expected = reference.generate(on_cpu, layer, PROMPTS, do_sample=False, max_new_tokens=6)
            assert out.device.type == device.type
            assert torch.equal(out.cpu(), expected), (type(lens).__name__, layer)
    out = LogitLens.from_model(on_device).generate(
        on_device, -1, PROMPTS, do_sample=False, max_new_tokens=6
    )
    for row, prompt in zip(out, PROMPTS, strict=True):
        assert row[7:].tolist() == _model_greedy(on_device, prompt, 6, device)


def test_sampling_with_a_generator_on_the_device_is_reproducible(on_device, device):
    lens = _lenses(on_device)[1]

    def sample(seed: int, temp: float = 1.0) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(seed)
        return lens.generate(
            on_device, 2, PROMPTS, temp=temp, max_new_tokens=8, generator=generator
        )

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    greedy = lens.generate(on_device, 2, PROMPTS, do_sample=False, max_new_tokens=8)
    assert torch.equal(sample(0, temp=1e-4), greedy)  # temperature → 0 is greedy
