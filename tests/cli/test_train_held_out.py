"""`hooklens train` keeps, per layer, the better of start and fine-tune on held-out text,
records both in history.json, says where the fine-tune lost, trains low-rank lenses
with `--rank`, and `hooklens eval` shows what training kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hooklens import TunedLens
from hooklens.cli import main
from hooklens.training.data import pack, split_texts
from hooklens.training.keep_better import held_out_kl
from hooklens.training.loop import CHECKPOINT_FILE
from tests.conftest import VOCAB

SEQ_LEN = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    generator = torch.Generator().manual_seed(0)
    rows = [
        " ".join(f"w{i}" for i in torch.randint(4, VOCAB, (24,), generator=generator).tolist())
        for _ in range(200)
    ]
    path = tmp_path_factory.mktemp("data") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    return path


def _train(corpus: Path, output: Path, *extra: str) -> list[str]:
    # A harmful fine-tune: a few Adam steps at lr 0.3 from a fast fit.
    return [
        "train", "--data", str(corpus), "--output", str(output), "--model-class", "bridge",
        "--seq-len", str(SEQ_LEN), "--batch-size", "2", "--fast-fit-tokens", "192",
        "--steps", "3", "--lr", "0.3", "--checkpoint-every", "2", "--matmul-dtype", "float32",
        "--held-out-tokens", "64", "--no-progress", *extra,
    ]  # fmt: skip


def _held_out(corpus: Path, tokenizer) -> list[torch.Tensor]:
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    chunks = list(pack(split_texts(texts, held_out=True), tokenizer, SEQ_LEN))[:4]
    return [torch.stack(chunks[:2]), torch.stack(chunks[2:4])]


@pytest.mark.slow  # 5-12 s on two shared cores
@pytest.mark.parametrize("rank", [None, 4])
def test_train_keeps_the_better_of_start_and_fine_tune_and_records_both(
    loads, model, corpus, tmp_path, capsys, rank
):
    output = tmp_path / "run"
    extra = ["--rank", str(rank)] if rank else []
    assert main(_train(corpus, output, *extra)) == 0
    history = json.loads((output / "history.json").read_text())
    assert [record["step"] for record in history["steps"]] == [1, 2, 3]
    check = history["held_out"]
    assert check["tokens"] == 64 and len(check["layers"]) == model.cfg.n_layers
    lens = TunedLens.load(output / "lens", model=model)
    assert lens.config.rank == rank
    measured = held_out_kl(model, lens, _held_out(corpus, model.tokenizer))["lens"]
    for layer, kl in zip(check["layers"], measured, strict=True):
        assert kl == pytest.approx(min(layer["start_kl"], layer["tuned_kl"]), abs=1e-5)
        assert layer["kept"] == ("start" if layer["start_kl"] < layer["tuned_kl"] else "fine-tune")
    lost = [layer for layer in check["layers"] if layer["kept"] == "start"]
    assert lost, "the fine-tune should have lost somewhere (lr 0.3)"
    out = capsys.readouterr().out
    for layer in lost:
        assert (
            f"layer {layer['layer']}: fine-tune {layer['tuned_kl']:.3f} > start "
            f"{layer['start_kl']:.3f} nats; kept the start (held-out KL on 64 tokens)"
        ) in out
    # the checkpoint holds the fine-tune and the start, not the choice
    checkpoint = torch.load(output / "checkpoint" / CHECKPOINT_FILE, weights_only=True)
    assert set(checkpoint["start"]) == set(checkpoint["lens"])

    # hooklens eval on the run's lens shows what training kept
    results = tmp_path / "eval.json"
    evaluate = ["eval", "--lens", str(output / "lens"), "--data", str(corpus)]
    evaluate += ["--seq-len", str(SEQ_LEN), "--tokens", "64", "--output", str(results)]
    assert main(evaluate) == 0
    shown = json.loads(results.read_text())["training_held_out"]
    assert shown == {"run/lens": check}
    printed = capsys.readouterr().out
    assert "run/lens: held-out KL(final ‖ lens) of its start and its fine-tune" in printed
    assert f"| {lost[0]['layer']} | {lost[0]['start_kl']:.3f} | " in printed


@pytest.mark.slow
def test_a_resumed_run_repeats_its_rank_and_ends_with_the_same_lens(
    loads, model, corpus, tmp_path, monkeypatch
):
    straight = tmp_path / "straight"
    assert main(_train(corpus, straight, "--rank", "4")) == 0
    killed = tmp_path / "killed"
    from hooklens.cli import train as training

    original = training.train_lens

    def dies(*args, **kwargs):  # stops at step 3, after the step-2 checkpoint
        return original(*args, **{**kwargs, "on_step": _stop_after(3)})

    monkeypatch.setattr(training, "train_lens", dies)
    with pytest.raises(KeyboardInterrupt):
        main(_train(corpus, killed, "--rank", "4"))
    monkeypatch.setattr(training, "train_lens", original)
    assert not (killed / "lens").exists() and not (killed / "history.json").exists()
    assert torch.load(killed / "checkpoint" / CHECKPOINT_FILE, weights_only=True)["step"] == 2
    assert main(_train(corpus, killed, "--rank", "8", "--resume")) == 2  # the rank is repeated
    assert main(_train(corpus, killed, "--rank", "4", "--resume")) == 0
    expected = json.loads((straight / "history.json").read_text())
    got = json.loads((killed / "history.json").read_text())
    assert [c["kept"] for c in got["held_out"]["layers"]] == [
        c["kept"] for c in expected["held_out"]["layers"]
    ]
    a = TunedLens.load(straight / "lens", model=model).state_dict()
    b = TunedLens.load(killed / "lens", model=model).state_dict()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, atol=1e-6, rtol=1e-5)


def _stop_after(step: int):
    def on_step(record):
        if record["step"] == step:
            raise KeyboardInterrupt

    return on_step
