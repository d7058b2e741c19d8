"""The KL training loop learns, checkpoints atomically and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from hooklens import TunedLens
from hooklens.training.loop import CHECKPOINT_FILE, TrainConfig, batch_loss, train_lens
from tests.conftest import VOCAB, flip_in_zip_member
from tests.tiny import Killed, dies_after


def _batches(n: int = 12, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (2, 12), generator=generator) for _ in range(n)]


# Muon: two optimisers in one state; the sampled KL: random columns each batch.
VARIANTS = {
    "adam": {},
    "muon": {"optimizer": "muon"},
    "sampled-kl": {"kl_samples": 32, "kl_top_k": 4},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_the_loss(hooked, variant):
    lens = TunedLens.from_model(hooked)
    config = TrainConfig(steps=12, lr=1e-2, checkpoint_every=100, **VARIANTS[variant])
    before, _ = batch_loss(hooked, lens, _batches(1, seed=9)[0], config)
    history = train_lens(hooked, lens, _batches(), config, progress=False)
    after, _ = batch_loss(hooked, lens, _batches(1, seed=9)[0], config)
    assert len(history) == 12 and history[0]["lr"] == 1e-2
    assert after.item() < before.item()
    assert all(p.requires_grad for p in hooked.parameters())  # model flags restored


@pytest.mark.parametrize("variant", VARIANTS)
def test_interrupted_and_resumed_run_ends_with_the_same_lens(hooked, tmp_path, variant):
    config = TrainConfig(
        steps=6, lr=1e-2, grad_accumulation=2, checkpoint_every=2, **VARIANTS[variant]
    )
    straight = TunedLens.from_model(hooked)
    train_lens(hooked, straight, _batches(), config, progress=False)

    resumed = TunedLens.from_model(hooked)
    with pytest.raises(Killed):  # dies during step 4, after the step-2 checkpoint
        train_lens(
            hooked,
            resumed,
            dies_after(_batches(), 7),
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


def test_running_out_of_data_says_how_many_batches_there_were_and_the_steps_need(hooked):
    config = TrainConfig(steps=5, grad_accumulation=2)
    with pytest.raises(ValueError) as caught:
        train_lens(hooked, TunedLens.from_model(hooked), _batches(3), config, progress=False)
    assert str(caught.value).startswith(
        "the data ran out at step 1 of 5: token_batches gave 3 batches and the steps need 10"
    )


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match="matmul_dtype"):
        TrainConfig(matmul_dtype="float8")


def test_sgd_lr_follows_tuned_lens_convention(hooked):
    """tuned-lens's "lr 1.0" for Nesterov SGD is torch lr 1.0 × (1 − momentum)."""
    from hooklens.training.optimizers import build_optimizer

    lens = TunedLens.from_model(hooked)
    optimizer = build_optimizer(list(lens.parameters()), TrainConfig(optimizer="sgd", lr=1.0))
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.1) and group["nesterov"] and group["momentum"] == 0.9


# --- issue 23: a checkpoint is verified on resume ------------------------------------------


def _checkpointed(model, directory) -> None:
    config = TrainConfig(steps=2, lr=1e-2, checkpoint_every=1, matmul_dtype="float32")
    lens = TunedLens.from_model(model)
    train_lens(model, lens, _batches(), config, checkpoint_dir=directory, progress=False)


def _resume(model, directory):
    config = TrainConfig(steps=2, lr=1e-2, checkpoint_every=1, matmul_dtype="float32")
    lens = TunedLens.from_model(model)
    return train_lens(
        model, lens, _batches(), config, checkpoint_dir=directory, resume=True, progress=False
    )


def _edit(path, edit, *, reseal: bool = False) -> None:
    from hooklens.artifacts import content_sha256

    state = torch.load(path, weights_only=True)
    edit(state)
    if reseal:
        state.pop("checkpoint_sha256", None)
        state["checkpoint_sha256"] = content_sha256(state)
    torch.save(state, path)


def test_a_checkpoint_records_the_checksum_of_its_content(hooked, tmp_path):
    from hooklens.artifacts import content_sha256

    _checkpointed(hooked, tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    rest = {key: value for key, value in state.items() if key != "checkpoint_sha256"}
    assert state["checkpoint_sha256"] == content_sha256(rest)


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: flip_in_zip_member(path, "data/0", offset=5, mask=0x04),
        lambda path: flip_in_zip_member(path, "data.pkl", offset=60, mask=0x04),
        _truncate,
        lambda path: path.write_bytes(path.read_bytes()[:-1]),
        lambda path: _edit(path, lambda state: state.update(step=1)),
        lambda path: _edit(path, lambda state: state["lens"]["layer_translators.0.weight"].add_(1)),
        lambda path: _edit(path, lambda state: state["history"][0].update(loss=0.0)),
    ],
    ids=["a-tensor-bit", "a-pickle-bit", "truncated", "one-byte-short", "step", "lens", "history"],
)
def test_resume_from_a_damaged_checkpoint_is_refused_by_name(hooked, tmp_path, damage):
    from hooklens import RunStateError

    _checkpointed(hooked, tmp_path)
    damage(tmp_path / CHECKPOINT_FILE)
    with pytest.raises(RunStateError) as info:
        _resume(hooked, tmp_path)
    assert str(tmp_path / CHECKPOINT_FILE) in str(info.value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda state: state.update(step=1), "inconsistent"),
        (lambda state: state.update(consumed=5), "inconsistent"),
        (lambda state: state.pop("optimizer"), "entry 'optimizer'"),
        (lambda state: state.update(step="2"), "entry 'step'"),
        (lambda state: state["lens"].pop("layer_translators.0.weight"), "does not fit"),
    ],
    ids=["step", "consumed", "no-optimizer", "step-str", "another-lens"],
)
def test_a_checkpoint_that_contradicts_itself_is_refused_by_name(hooked, tmp_path, edit, expected):
    """Even with a right checksum (a checkpoint written wrongly, or resealed by hand)."""
    from hooklens import RunStateError

    _checkpointed(hooked, tmp_path)
    _edit(tmp_path / CHECKPOINT_FILE, edit, reseal=True)
    with pytest.raises(RunStateError, match=expected) as info:
        _resume(hooked, tmp_path)
    assert str(tmp_path / CHECKPOINT_FILE) in str(info.value)


def test_a_checkpoint_before_checksums_resumes_with_a_warning(hooked, tmp_path):
    _checkpointed(hooked, tmp_path)
    _edit(tmp_path / CHECKPOINT_FILE, lambda state: state.pop("checkpoint_sha256"))
    with pytest.warns(UserWarning, match="without checkpoint checksums"):
        history = _resume(hooked, tmp_path)
    assert [record["step"] for record in history] == [1, 2]
