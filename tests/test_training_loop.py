"""The KL training loop learns, checkpoints atomically and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from hooklens import TunedLens
from hooklens.training.loop import CHECKPOINT_FILE, TrainConfig, batch_loss, train_lens
from tests.conftest import VOCAB


def _batches(n: int = 12, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (2, 12), generator=generator) for _ in range(n)]


def test_training_lowers_the_loss(hooked):
    lens = TunedLens.from_model(hooked)
    config = TrainConfig(steps=12, lr=1e-2, checkpoint_every=100)
    before, _ = batch_loss(hooked, lens, _batches(1, seed=9)[0], config)
    history = train_lens(hooked, lens, _batches(), config, progress=False)
    after, _ = batch_loss(hooked, lens, _batches(1, seed=9)[0], config)
    assert len(history) == 12 and history[0]["lr"] == 1e-2
    assert after.item() < before.item()
    assert all(p.requires_grad for p in hooked.parameters())  # model flags restored


class _Killed(Exception):
    pass


def _dies_after(batches: list[torch.Tensor], n: int):
    for index, batch in enumerate(batches):
        if index == n:
            raise _Killed
        yield batch


def test_interrupted_and_resumed_run_ends_with_the_same_lens(hooked, tmp_path):
    config = TrainConfig(steps=6, lr=1e-2, grad_accumulation=2, checkpoint_every=2)
    straight = TunedLens.from_model(hooked)
    train_lens(hooked, straight, _batches(), config, progress=False)

    resumed = TunedLens.from_model(hooked)
    with pytest.raises(_Killed):  # dies during step 4, after the step-2 checkpoint
        train_lens(
            hooked,
            resumed,
            _dies_after(_batches(), 7),
            config,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]
    fresh = TunedLens.from_model(hooked)
    history = train_lens(
        hooked, fresh, _batches(), config, checkpoint_dir=tmp_path, resume=True, progress=False
    )
    assert [record["step"] for record in history] == [1, 2, 3, 4, 5, 6]
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, atol=1e-6, rtol=1e-5)


def test_resume_refuses_another_config(hooked, tmp_path):
    config = TrainConfig(steps=2, checkpoint_every=1)
    train_lens(
        hooked,
        TunedLens.from_model(hooked),
        _batches(),
        config,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    with pytest.raises(ValueError, match="another TrainConfig"):
        train_lens(
            hooked,
            TunedLens.from_model(hooked),
            _batches(),
            TrainConfig(steps=3, checkpoint_every=1),
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )


def test_running_out_of_data_says_so(hooked):
    with pytest.raises(ValueError, match="data ran out at step 2"):
        train_lens(
            hooked, TunedLens.from_model(hooked), _batches(2), TrainConfig(steps=5), progress=False
        )


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match="matmul_dtype"):
        TrainConfig(matmul_dtype="float16")


def test_sgd_lr_follows_tuned_lens_convention(hooked):
    """tuned-lens's "lr 1.0" for Nesterov SGD is torch lr 1.0 × (1 − momentum)."""
    from hooklens.training.loop import _optimizer

    lens = TunedLens.from_model(hooked)
    optimizer = _optimizer(list(lens.parameters()), TrainConfig(optimizer="sgd", lr=1.0))
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.1) and group["nesterov"] and group["momentum"] == 0.9
