"""Training on the device: a run at the device's own loss precision (`matmul_dtype`
"auto": bf16 on a GPU with bf16 tensor cores) learns, one killed after a checkpoint
resumes to the lens of the uninterrupted run, and float32 steps equal the CPU's."""

from __future__ import annotations

import pytest
import torch

from hooklens import TunedLens
from hooklens.core.precision import matmul_dtype
from hooklens.training.loop import CHECKPOINT_FILE, TrainConfig, batch_loss, train_lens
from tests.devices.test_device_discipline import _lenses, _tokens
from tests.tiny import Killed, dies_after

pytestmark = pytest.mark.cuda


def _batches(n: int = 12) -> list[torch.Tensor]:
    return [_tokens(2, 12, seed) for seed in range(n)]  # on the CPU: the loop moves them


def test_a_run_at_the_devices_precision_lowers_the_loss(on_device, device, tmp_path):
    config = TrainConfig(steps=8, lr=1e-2)
    lens = _lenses(on_device)[1]  # a random tuned lens: far from the model's output
    held = _tokens(2, 12, seed=99)
    before, _ = batch_loss(on_device, lens, held, config)
    history = train_lens(
        on_device, lens, _batches(), config, checkpoint_dir=tmp_path, progress=False
    )
    after, _ = batch_loss(on_device, lens, held, config)
    assert len(history) == 8 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    assert after.item() < before.item()
    assert next(lens.parameters()).device.type == device.type
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True, map_location="cpu")
    expected = str(matmul_dtype("auto", device)).removeprefix("torch.")
    assert state["matmul_dtype"] == expected  # what "auto" measured on this device


def test_a_killed_run_resumes_to_the_uninterrupted_lens(on_device, tmp_path):
    config = TrainConfig(steps=6, lr=1e-2, grad_accumulation=2, checkpoint_every=2)
    straight = TunedLens.from_model(on_device)
    train_lens(on_device, straight, _batches(), config, progress=False)

    resumed = TunedLens.from_model(on_device)
    with pytest.raises(Killed):  # dies during step 4, after the step-2 checkpoint
        train_lens(
            on_device, resumed, dies_after(_batches(), 7), config,
            checkpoint_dir=tmp_path, progress=False,
        )  # fmt: skip
    fresh = TunedLens.from_model(on_device)
    history = train_lens(
        on_device, fresh, _batches(), config, checkpoint_dir=tmp_path, resume=True,
        progress=False,
    )  # fmt: skip
    assert [record["step"] for record in history] == [1, 2, 3, 4, 5, 6]
    for name, value in straight.state_dict().items():
        assert not torch.equal(value, TunedLens.from_model(on_device).state_dict()[name])
        torch.testing.assert_close(fresh.state_dict()[name], value, atol=1e-6, rtol=1e-5)


def test_float32_steps_on_the_device_equal_the_cpus(on_device, on_cpu):
    """SGD (linear in the gradient: Adam would divide near-zero gradients by their own
    size, and summation order could flip their sign) from a random lens."""
    config = TrainConfig(steps=3, lr=1e-2, optimizer="sgd", matmul_dtype="float32")
    lenses = []
    for model in (on_device, on_cpu):
        lens = _lenses(model)[1]  # the same random tuned lens on both
        train_lens(model, lens, _batches(), config, progress=False)
        lenses.append(lens)
    device_state, cpu_state = (lens.state_dict() for lens in lenses)
    for name, expected in cpu_state.items():
        scale = float(expected.abs().max())
        torch.testing.assert_close(device_state[name].cpu(), expected, atol=1e-5 * scale, rtol=1e-4)
