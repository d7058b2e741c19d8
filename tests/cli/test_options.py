"""The options `train` and `eval` share: MODEL and DATA go with or without their flags.

tuned-lens's README writes `tuned-lens train gpt2 val.jsonl --output gpt2-lens` and
`tuned-lens eval gpt2 test.jsonl --lens gpt2-lens`; the same words, with `hooklens` in
front, run here beside `--model` / `--data`, and a value given both ways is refused.
The commands run on tiny random bridges (`models.load` patched).
"""

from __future__ import annotations

import json

import pytest

from hooklens import TunedLens, models
from hooklens.cli import main

SMALL_TRAIN = [
    "--model-class", "bridge", "--seq-len", "16", "--batch-size", "1",
    "--fast-fit-tokens", "32", "--steps", "2", "--matmul-dtype", "float32", "--no-progress",
]  # fmt: skip
SMALL_EVAL = ["--seq-len", "16", "--tokens", "32"]


@pytest.fixture
def loads(monkeypatch, model):
    """`models.load` returns the tiny bridge; the names it was asked for are recorded."""
    asked: list[str] = []

    def load(name, **kwargs):
        asked.append(name)
        return model

    monkeypatch.setattr(models, "load", load)
    return asked


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "val.jsonl"
    rows = [" ".join(f"w{4 + (i * 7 + j) % 90}" for j in range(40)) for i in range(60)]
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    return path


def test_train_takes_model_and_data_positionally_as_tuned_lens_writes_them(loads, corpus, tmp_path):
    output = tmp_path / "gpt2-lens"
    assert main(["train", "tiny-llama", str(corpus), "--output", str(output), *SMALL_TRAIN]) == 0
    assert loads == ["tiny-llama"]
    run = json.loads((output / "run.json").read_text())
    assert (run["model"], run["data"]) == ("tiny-llama", str(corpus))
    assert (output / "lens" / "config.json").is_file()


def test_eval_takes_model_and_data_positionally_as_tuned_lens_writes_them(
    loads, model, corpus, tmp_path
):
    lens = tmp_path / "gpt2-lens"
    TunedLens.from_model(model).save(lens)
    output = tmp_path / "eval.json"
    command = ["eval", "tiny-llama", str(corpus), "--lens", str(lens), "--output", str(output)]
    assert main([*command, *SMALL_EVAL]) == 0
    assert loads == ["tiny-llama"]
    assert json.loads(output.read_text())["tokens"] == 32


def test_eval_lens_may_name_the_folder_train_wrote(loads, model, corpus, tmp_path):
    """tuned-lens's `eval --lens DIR` names its `train --output DIR`; hooklens's train
    writes the lens into DIR/lens beside run.json."""
    run = tmp_path / "gpt2-lens"
    TunedLens.from_model(model).save(run / "lens")
    (run / "run.json").write_text("{}\n")
    output = tmp_path / "eval.json"
    command = ["eval", "tiny-llama", str(corpus), "--lens", str(run), "--output", str(output)]
    assert main([*command, *SMALL_EVAL]) == 0
    names = list(json.loads(output.read_text())["lenses"])
    assert names[0] == "logit lens" and names[1].endswith("/gpt2-lens") and len(names) == 2


@pytest.mark.parametrize("command", ["train", "eval"])
def test_one_positional_and_the_other_flag_go_together(loads, corpus, tmp_path, command):
    small = SMALL_TRAIN if command == "train" else SMALL_EVAL
    output = tmp_path / ("run" if command == "train" else "eval.json")
    arguments = [command, "tiny-llama", "--data", str(corpus), "--output", str(output), *small]
    assert main(arguments) == 0
    assert loads == ["tiny-llama"]


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize(
    ("given", "said"),
    [
        (["gpt2", "--model", "pythia"], "the model is given twice, as MODEL (gpt2) and as "
         "--model (pythia): give it once, either way (the positionals are MODEL then DATA)"),
        (["gpt2", "val.jsonl", "--data", "val.jsonl"], "the data is given twice, as DATA "
         "(val.jsonl) and as --data (val.jsonl): give it once, either way"),
    ],
)  # fmt: skip
def test_a_value_given_both_ways_is_refused_before_anything_loads(
    monkeypatch, tmp_path, capsys, command, given, said
):
    def load(name, **kwargs):
        raise AssertionError("the model loaded before the arguments were checked")

    monkeypatch.setattr(models, "load", load)
    output = tmp_path / "out"
    assert main([command, *given, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hooklens {command}: {said}"), err
    assert len(err.splitlines()) == 1 and not output.exists()


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_shows_both_forms(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[MODEL] [DATA]" in text
    assert "--model MODEL" in text and "--data DATA" in text
    assert f"default: {models.DEFAULT_MODEL}" in text and "default: wikipedia-summaries" in text
    assert f"`hooklens {command} gpt2 val.jsonl ...` is `--model gpt2 --data val.jsonl ...`" in text
