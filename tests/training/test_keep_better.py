"""Training ends with every layer at most its start on held-out text."""

from __future__ import annotations

import pytest
import torch

from hooklens import TunedLens
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.keep_better import held_out_kl, keep_better, lost_lines
from hooklens.training.loop import CHECKPOINT_FILE, TrainConfig, train_lens
from tests.conftest import VOCAB


def _batches(n: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (2, 12), generator=generator) for _ in range(n)]


# A fine-tune that hurts: a few Adam steps at lr 0.3 from a good fast fit.
HARMFUL = TrainConfig(steps=3, lr=0.3, max_grad_norm=100.0, checkpoint_every=2)


def _fast_fit(model, rank=None) -> TunedLens:
    return fit_tuned_lens(model, _batches(6, seed=0), rank=rank, progress=False)


def _state(lens: TunedLens) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lens.state_dict().items()}


@pytest.mark.parametrize("rank", [None, 4])
def test_a_harmful_fine_tune_ends_with_every_layer_at_most_its_start(hooked, rank):
    held_out = _batches(3, seed=7)
    start_lens = _fast_fit(hooked, rank)
    start = held_out_kl(hooked, start_lens, held_out)["lens"]

    unchecked = _fast_fit(hooked, rank)
    train_lens(hooked, unchecked, _batches(3, seed=1), HARMFUL, progress=False)
    worse = held_out_kl(hooked, unchecked, held_out)["lens"]
    assert any(w > s for w, s in zip(worse, start, strict=True))  # the fine-tune does harm

    lens = _fast_fit(hooked, rank)
    history = train_lens(
        hooked, lens, _batches(3, seed=1), HARMFUL, progress=False, held_out=held_out
    )
    ended = held_out_kl(hooked, lens, held_out)["lens"]
    assert all(e <= s + 1e-6 for e, s in zip(ended, start, strict=True)), (ended, start)
    assert [c["layer"] for c in history.held_out] == list(range(hooked.cfg.n_layers))
    for choice, s, w, e in zip(history.held_out, start, worse, ended, strict=True):
        assert choice["start_kl"] == pytest.approx(s, abs=1e-5)
        assert choice["tuned_kl"] == pytest.approx(w, abs=1e-5)
        assert choice["kept"] == ("start" if s < w else "fine-tune")
        assert e == pytest.approx(min(s, w), abs=1e-5)
    assert len(lost_lines(history.held_out)) == sum(
        w > s for w, s in zip(worse, start, strict=True)
    )


def test_without_held_out_batches_the_fine_tune_is_kept_unchecked(hooked):
    lens = _fast_fit(hooked)
    history = train_lens(hooked, lens, _batches(3, seed=1), HARMFUL, progress=False)
    assert history.held_out is None and [r["step"] for r in history] == [1, 2, 3]


def test_keep_better_takes_each_layer_whole_from_one_side(hooked):
    lens = _fast_fit(hooked)
    start = _state(lens)
    with torch.no_grad():
        lens[0].bias.add_(5.0)  # ruins layer 0 only
        lens[2].weight.mul_(0.5)
    tuned = _state(lens)
    choices = keep_better(hooked, lens, start, _batches(2, seed=7))
    assert choices[0]["kept"] == "start" and choices[0]["tuned_kl"] > choices[0]["start_kl"]
    for choice in choices:
        source = start if choice["kept"] == "start" else tuned
        prefix = f"layer_translators.{choice['layer']}."
        for key, value in lens.state_dict().items():
            if key.startswith(prefix):
                assert torch.equal(value, source[key]), key
    assert lost_lines(choices)[0].startswith("layer 0: fine-tune ")
    assert lost_lines(choices)[0].endswith(" nats; kept the start")


def test_a_resumed_run_makes_the_same_choice_once_at_its_end(hooked, tmp_path):
    held_out = _batches(2, seed=7)
    straight = _fast_fit(hooked)
    expected = train_lens(
        hooked, straight, _batches(3, seed=1), HARMFUL, progress=False, held_out=held_out
    )

    def dies_after_two(batches):
        for index, batch in enumerate(batches):
            if index == 2:
                raise KeyboardInterrupt
            yield batch

    interrupted = _fast_fit(hooked)
    start = _state(interrupted)
    with pytest.raises(KeyboardInterrupt):  # after the step-2 checkpoint
        train_lens(
            hooked,
            interrupted,
            dies_after_two(_batches(3, seed=1)),
            HARMFUL,
            checkpoint_dir=tmp_path,
            progress=False,
            held_out=held_out,
        )
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert saved["step"] == 2
    for key, value in start.items():  # the start rides along; the lens is the fine-tune's
        assert torch.equal(saved["start"][key], value)
    fresh = TunedLens.from_model(hooked)  # its weights come from the checkpoint
    history = train_lens(
        hooked,
        fresh,
        _batches(3, seed=1),
        HARMFUL,
        checkpoint_dir=tmp_path,
        resume=True,
        progress=False,
        held_out=held_out,
    )
    assert [c["kept"] for c in history.held_out] == [c["kept"] for c in expected.held_out]
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, atol=1e-6, rtol=1e-5)
    final = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    kept_start = [c["layer"] for c in history.held_out if c["kept"] == "start"]
    assert kept_start  # the checkpoint keeps the fine-tune: a resume would train on from it
    for layer in kept_start:
        key = f"layer_translators.{layer}.weight"
        assert not torch.equal(final["lens"][key], fresh.state_dict()[key])


def _reseal(path, edit) -> None:
    from hooklens.artifacts import content_sha256

    state = torch.load(path, weights_only=True)
    edit(state)
    state.pop("checkpoint_sha256", None)
    state["checkpoint_sha256"] = content_sha256(state)
    torch.save(state, path)


def _run_to_the_end(model, directory, *, resume: bool, held_out=None):
    return train_lens(
        model,
        _fast_fit(model) if not resume else TunedLens.from_model(model),
        _batches(3, seed=1),
        HARMFUL,
        checkpoint_dir=directory,
        resume=resume,
        progress=False,
        held_out=held_out,
    )


def test_a_checkpoint_before_starts_were_kept_resumes_unchecked_with_a_warning(hooked, tmp_path):
    _run_to_the_end(hooked, tmp_path, resume=False)
    _reseal(tmp_path / CHECKPOINT_FILE, lambda state: state.pop("start"))
    with pytest.warns(UserWarning, match="records no start .made by an older hooklens."):
        history = _run_to_the_end(hooked, tmp_path, resume=True, held_out=_batches(1, seed=7))
    assert history.held_out is None and [r["step"] for r in history] == [1, 2, 3]


def test_a_checkpoint_whose_start_is_not_this_lens_is_refused_by_name(hooked, tmp_path):
    from hooklens.errors import RunStateError

    _run_to_the_end(hooked, tmp_path, resume=False)
    _reseal(tmp_path / CHECKPOINT_FILE, lambda state: state["start"].popitem())
    with pytest.raises(RunStateError, match="entry 'start' should be the state dict") as info:
        _run_to_the_end(hooked, tmp_path, resume=True, held_out=_batches(1, seed=7))
    assert str(tmp_path / CHECKPOINT_FILE) in str(info.value)
