"""`hooklens train` and `train_lens` are never silently wrong and never half-written.

Bad settings and unreadable data are refused before any model loads; a checkpoint is
replaced only when asked; a resume on other data or another config says what changed;
and a run killed (SIGKILL) or failed before its first checkpoint leaves nothing that
mixes two runs or blocks the retry.

The command line runs here on a tiny random bridge (`models.load` patched), so each
run takes a second; tests/cli/test_train.py runs it on the embedded SmolLM2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hooklens import TunedLens, models
from hooklens.cli import main as cli_main
from hooklens.cli import train as training
from hooklens.errors import (
    DataError,
    InputError,
    OutputExistsError,
    RunStateError,
    UnknownModelError,
)
from hooklens.training.data import (
    check_data_source,
    data_fingerprint,
    load_texts,
    pack,
    split_texts,
)
from hooklens.training.loop import CHECKPOINT_FILE, TrainConfig, train_lens
from tests.conftest import VOCAB

ROOT = Path(__file__).resolve().parents[2]


def _write_texts(path: Path, seed: int = 0, n: int = 40) -> Path:
    generator = torch.Generator().manual_seed(seed)
    rows = [
        " ".join(f"w{i}" for i in torch.randint(4, VOCAB, (20,), generator=generator).tolist())
        for _ in range(n)
    ]
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    return _write_texts(tmp_path / "texts.jsonl")


def _arguments(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--output", str(output), "--model-class", "bridge",
        "--seq-len", "16", "--batch-size", "1", "--fast-fit-tokens", "0", "--steps", "2",
        "--checkpoint-every", "1", "--matmul-dtype", "float32", "--no-progress", *extra,
    ]  # fmt: skip


def _batches(n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (2, 12), generator=generator) for _ in range(n)]


# Data sources: refused quickly, with what was expected and what to do.


def test_missing_data_file_is_a_file_not_found_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no data file at .*missing\.jsonl"):
        check_data_source(str(tmp_path / "missing.jsonl"))


def test_csv_data_is_refused_with_the_supported_formats_and_how_to_convert(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(DataError, match=r"\.csv files are not supported") as error:
        check_data_source(str(path))
    assert ".jsonl, .json, .txt or .parquet" in str(error.value)
    assert "to_json" in str(error.value)  # how to convert


def test_empty_data_file_is_refused(tmp_path):
    for name, content in [("empty.jsonl", ""), ("blank.txt", "\n  \n")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match="is empty"):
            check_data_source(str(tmp_path / name))


def test_record_without_the_text_field_names_the_fields_found(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"body": "hello", "id": 1}\n')
    with pytest.raises(DataError) as error:
        check_data_source(str(path))
    message = str(error.value)
    assert "no 'text' field" in message and "'body', 'id'" in message
    assert "--text-field NAME" in message
    check_data_source(str(path), text_field="body")  # the field it has


def test_parquet_and_json_array_records_are_checked_too(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["hello"]}), tmp_path / "rows.parquet")
    with pytest.raises(DataError, match="fields found: 'body'"):
        check_data_source(str(tmp_path / "rows.parquet"))
    (tmp_path / "rows.json").write_text(json.dumps([{"text": "hello"}]))
    check_data_source(str(tmp_path / "rows.json"))
    with pytest.raises(DataError, match="no 'body' field"):
        check_data_source(str(tmp_path / "rows.json"), text_field="body")


def test_hub_names_are_not_checked():
    check_data_source("allenai/c4")
    check_data_source("wikipedia-summaries")


def test_data_fingerprint_follows_the_content_not_the_mtime(tmp_path):
    path = _write_texts(tmp_path / "texts.jsonl")
    before = data_fingerprint(str(path))
    os.utime(path, (0, 0))
    assert data_fingerprint(str(path)) == before
    path.write_text(path.read_text().replace("w4", "w5", 1))
    assert data_fingerprint(str(path)) != before
    assert data_fingerprint("allenai/c4") is None


# The command line checks arguments and data before any model loads.


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--batch-size", "0", "--batch-size must be at least 1, got 0"),
        ("--batch-size", "-2", "--batch-size must be at least 1, got -2"),
        ("--checkpoint-every", "0", "checkpoint_every (steps between checkpoints) must be at"),
        ("--steps", "0", "steps (optimiser steps to take) must be at least 1, got 0"),
        ("--seq-len", "1", "--seq-len must be at least 2"),
        ("--fast-fit-tokens", "-1", "--fast-fit-tokens must be 0"),
        ("--grad-accumulation", "0", "grad_accumulation (micro-batches per step) must be"),
        ("--warmup-steps", "-1", "warmup_steps must be 0"),
        ("--lr", "-0.1", "lr must be a finite number"),
        ("--momentum", "1.0", "momentum must be in [0, 1)"),
        ("--rank", "0", "--rank must be at least 1 (or left out: full translators), got 0"),
        ("--held-out-tokens", "-1", "--held-out-tokens must be 0 (no check) or more, got -1"),
    ],
)
def test_bad_settings_are_refused_before_the_model_loads(
    corpus, tmp_path, tiny_models, capsys, flag, value, expected
):
    output = tmp_path / "run"
    arguments = [*_arguments(corpus, output), flag, value]  # the last value given counts
    with pytest.raises(InputError, match=re.escape(expected)):
        training.main(arguments[1:])
    assert cli_main(arguments) == 2
    assert expected in capsys.readouterr().err
    assert tiny_models == [] and not output.exists()


@pytest.mark.parametrize(
    ("name", "content", "error", "expected"),
    [
        ("texts.csv", "text\nhello\n", DataError, ".csv files are not supported"),
        ("rows.jsonl", '{"body": "hello"}\n', DataError, "no 'text' field"),
        ("missing.jsonl", None, FileNotFoundError, "no data file at"),
        ("empty.jsonl", "", DataError, "is empty"),
    ],
)
def test_unreadable_data_is_refused_before_the_model_loads(
    tmp_path, tiny_models, capsys, name, content, error, expected
):
    data = tmp_path / name
    if content is not None:
        data.write_text(content)
    output = tmp_path / "run"
    with pytest.raises(error, match=expected):
        training.main(_arguments(data, output)[1:])
    assert cli_main(_arguments(data, output)) == 2
    assert expected in capsys.readouterr().err
    assert tiny_models == [] and not output.exists()


def _training_tokens(data: Path, tokenizer, seq_len: int = 16) -> int:
    """Tokens of `data`'s training split in whole `seq_len` chunks, as the run reads them."""
    texts = (row["text"] for row in load_texts(str(data), streaming=True))
    return sum(
        chunk.numel() for chunk in pack(split_texts(texts, held_out=False), tokenizer, seq_len)
    )


def test_a_fast_fit_that_would_take_all_the_text_stops_before_it_runs_naming_the_flag(
    corpus, tmp_path, tiny_models, word_tokenizer, monkeypatch, capsys
):
    """Found porting tuned-lens's commands: the default fast fit (25,600 tokens) took all
    of a small file and the run stopped at "data ran out at step 0", naming no flag."""

    def no_fit(*args, **kwargs):
        raise AssertionError("the fast fit ran on data it leaves nothing after")

    monkeypatch.setattr(training, "fit_tuned_lens", no_fit)
    output = tmp_path / "run"
    arguments = [*_arguments(corpus, output), "--fast-fit-tokens", "25600"]  # the default
    assert cli_main(arguments) == 2
    err = capsys.readouterr().err
    held = _training_tokens(corpus, word_tokenizer)
    assert 0 < held < 25_600
    assert err.startswith(
        "hooklens train: the fast fit would take all the training text and leave none for "
        f"the fine-tune: --data {corpus} held {held:,} tokens of training text in --seq-len "
        f"16 chunks: {held:,} for the fast fit (--fast-fit-tokens 25600) and 0 for the "
        "fine-tune, whose --steps 2 need 32 (16 a step): give more text, fewer --steps, or "
        "a smaller --fast-fit-tokens (0 skips the fit)"
    ), err
    assert len(tiny_models) == 1 and not output.exists()  # nothing written: retry as it was


def test_data_that_runs_out_in_the_fine_tune_says_where_the_text_went(
    corpus, tmp_path, tiny_models, word_tokenizer, capsys
):
    output = tmp_path / "run"
    arguments = [*_arguments(corpus, output), "--fast-fit-tokens", "64", "--steps", "10000"]
    assert cli_main(arguments) == 2
    err = capsys.readouterr().err
    held = _training_tokens(corpus, word_tokenizer)
    steps_done = (held - 64) // 16
    assert err.startswith(
        f"hooklens train: the data ran out at step {steps_done} of 10000: token_batches gave "
        f"{steps_done} batches and the steps need 10000 (steps × grad_accumulation): give "
        f"more text or fewer steps. --data {corpus} held {held:,} tokens of training text in "
        f"--seq-len 16 chunks: 64 for the fast fit (--fast-fit-tokens 64) and "
        f"{held - 64:,} for the fine-tune, whose --steps 10000 need 160,000 (16 a step)"
    ), err


def test_help_shows_every_default_and_choice():
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    training.add_arguments(parser)
    undocumented = [a.dest for a in parser._actions if not a.help and a.dest != "help"]
    assert undocumented == []
    text = " ".join(parser.format_help().split())
    assert "{adam,adamw,sgd,muon}" in text and "{auto,float32,bfloat16,float16}" in text
    for default in ("(default: 250)", "(default: 512)", "(default: adam)"):
        assert default in text
    assert "default: adam 0.001, adamw 0.001, sgd 1, muon 0.01" in text  # --lr, per optimizer


# Checkpoints: replaced only when asked; a resume says what differs.


def test_train_lens_refuses_to_replace_a_checkpoint_without_overwrite(model_zoo, tmp_path):
    model = model_zoo["bridge-llama"]
    config = TrainConfig(steps=1, matmul_dtype="float32")
    train_lens(
        model,
        TunedLens.from_model(model),
        _batches(),
        config,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite=True to replace it"):
        train_lens(model, TunedLens.from_model(model), _batches(), config, checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    with pytest.raises(InputError, match="pick one"):
        train_lens(
            model,
            TunedLens.from_model(model),
            _batches(),
            config,
            checkpoint_dir=tmp_path,
            resume=True,
            overwrite=True,
        )
    other = TrainConfig(steps=1, seed=1, matmul_dtype="float32")
    train_lens(
        model,
        TunedLens.from_model(model),
        _batches(),
        other,
        checkpoint_dir=tmp_path,
        overwrite=True,
        progress=False,
    )
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["config"]["seed"] == 1


def test_train_lens_resume_names_the_config_fields_that_differ(model_zoo, tmp_path):
    model = model_zoo["bridge-llama"]
    config = TrainConfig(steps=2, checkpoint_every=1, matmul_dtype="float32")
    train_lens(
        model,
        TunedLens.from_model(model),
        _batches(),
        config,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    changed = TrainConfig(steps=2, checkpoint_every=1, matmul_dtype="float32", lr=0.01)
    with pytest.raises(RunStateError, match=r"lr: 0.001 in the checkpoint, 0.01 now"):
        train_lens(
            model,
            TunedLens.from_model(model),
            _batches(),
            changed,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_train_lens_resume_on_other_batches_is_refused(model_zoo, tmp_path):
    model = model_zoo["bridge-llama"]
    config = TrainConfig(steps=4, checkpoint_every=2, matmul_dtype="float32")
    with pytest.raises(KeyboardInterrupt):
        train_lens(
            model,
            TunedLens.from_model(model),
            _dies_at(_batches(), 2),
            config,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    for other in (_batches(seed=1), _batches()[1:], _batches(n=1)):
        with pytest.raises(RunStateError, match=r"differ from those|end before the 2"):
            train_lens(
                model,
                TunedLens.from_model(model),
                other,
                config,
                checkpoint_dir=tmp_path,
                resume=True,
                progress=False,
            )
    history = train_lens(
        model,
        TunedLens.from_model(model),
        _batches(),
        config,
        checkpoint_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert [record["step"] for record in history] == [1, 2, 3, 4]


def _dies_at(batches: list[torch.Tensor], index: int):
    for position, batch in enumerate(batches):
        if position == index:
            raise KeyboardInterrupt  # as if killed after the checkpoint before this batch
        yield batch


def test_resume_keeps_the_matmul_dtype_auto_chose_when_the_run_began(
    model_zoo, tmp_path, monkeypatch
):
    """ "auto" times a probe matmul, so another process may choose otherwise: a resume
    must compute as the run began, or it ends with another lens than an unbroken run."""
    from hooklens.training import loop

    model = model_zoo["bridge-llama"]
    config = TrainConfig(steps=4, checkpoint_every=2, lr=1e-2)  # matmul_dtype="auto"
    monkeypatch.setattr(loop, "matmul_dtype", lambda requested, device: torch.bfloat16)
    straight = TunedLens.from_model(model)
    train_lens(model, straight, _batches(), config, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_lens(
            model,
            TunedLens.from_model(model),
            _dies_at(_batches(), 2),
            config,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    monkeypatch.setattr(loop, "matmul_dtype", lambda requested, device: torch.float32)
    resumed = TunedLens.from_model(model)
    train_lens(
        model, resumed, _batches(), config, checkpoint_dir=tmp_path, resume=True, progress=False
    )
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=1e-5)


def test_cli_resume_with_other_settings_names_them_before_the_model_loads(
    corpus, tmp_path, tiny_models, capsys
):
    output = tmp_path / "run"
    assert cli_main(_arguments(corpus, output)) == 0
    loaded = len(tiny_models)
    assert cli_main([*_arguments(corpus, output), "--lr", "0.01", "--resume"]) == 2
    assert "lr: 0.001 then, 0.01 now" in capsys.readouterr().err
    with pytest.raises(RunStateError, match="seq_len: 16 then, 8 now; steps: 2 then, 3 now"):
        training.main(
            [*_arguments(corpus, output)[1:], "--seq-len", "8", "--steps", "3", "--resume"]
        )
    assert len(tiny_models) == loaded


def test_cli_resume_after_the_data_changed_is_refused(corpus, tmp_path, tiny_models, capsys):
    output = tmp_path / "run"
    assert cli_main([*_arguments(corpus, output), "--steps", "4", "--checkpoint-every", "2"]) == 0
    resume = [*_arguments(corpus, output), "--steps", "4", "--checkpoint-every", "2", "--resume"]
    loaded = len(tiny_models)
    _write_texts(corpus, seed=1)  # the same name, size and format; other text
    with pytest.raises(RunStateError, match=r"content of --data .*texts.jsonl changed"):
        training.main(resume[1:])
    assert cli_main(resume) == 2
    assert "restore that data, or --overwrite" in capsys.readouterr().err
    assert len(tiny_models) == loaded  # refused before the model loads
    _write_texts(corpus, seed=0)  # the data back as it was: the resume goes ahead
    assert cli_main(resume) == 0


# Output directories: a failed start writes nothing; a kill leaves one run, not two.


def test_failed_start_writes_nothing_and_the_retry_needs_no_flag(
    corpus, tmp_path, tiny_models, monkeypatch
):
    output = tmp_path / "run"
    assert cli_main(_arguments(tmp_path / "missing.jsonl", output)) == 2
    assert not output.exists()
    with monkeypatch.context() as patch:

        def unknown(name, **_):
            raise UnknownModelError(f"unknown model {name!r}")

        patch.setattr(models, "load", unknown)
        assert cli_main(_arguments(corpus, output)) == 2
    assert not output.exists()
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "w4 w5"}\n')
    assert cli_main(_arguments(short, output)) == 2  # no chunk of 16 tokens
    assert not output.exists()
    assert cli_main(_arguments(corpus, output)) == 0
    assert {p.name for p in output.iterdir()} == {"run.json", "checkpoint", "lens", "history.json"}


_KILLED_RUN = """
import os, signal, sys
from transformers import AutoTokenizer
from hooklens import models
from hooklens.cli import main
from hooklens.cli import train as run
from tests.conftest import make_bridge

tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
models.load = lambda name, **_: make_bridge(tokenizer)
def killed(*args, **kwargs):  # run.json is written; the first checkpoint is not
    os.kill(os.getpid(), signal.SIGKILL)
run.fit_tuned_lens = killed
main(sys.argv[2:])
"""


def test_overwrite_killed_before_its_first_checkpoint_leaves_no_mix_of_two_runs(
    corpus, tmp_path, tiny_models, word_tokenizer, capsys
):
    output = tmp_path / "run"
    assert cli_main(_arguments(corpus, output)) == 0  # the old, finished run
    tokenizer_dir = tmp_path / "tokenizer"
    word_tokenizer.save_pretrained(tokenizer_dir)
    new = [*_arguments(corpus, output), "--seed", "7", "--fast-fit-tokens", "32"]
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(tokenizer_dir), *new, "--overwrite"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(p.name for p in output.iterdir()) == ["run.json"]  # no old lens beside it
    assert json.loads((output / "run.json").read_text())["config"]["seed"] == 7

    assert cli_main([*new, "--resume"]) == 2
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert cli_main(new) == 0  # a plain retry: there is nothing to lose
    assert {p.name for p in output.iterdir()} == {"run.json", "checkpoint", "lens", "history.json"}
    assert json.loads((output / "run.json").read_text())["config"]["seed"] == 7


def _resume_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from tests.conftest import make_hooked

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = make_hooked("RMS")
        config = TrainConfig(steps=2, checkpoint_every=1, matmul_dtype="float32")
        checkpoint = Path(out) / "checkpoint"
        train_lens(
            model, TunedLens.from_model(model), _batches(seed=rank), config,
            checkpoint_dir=checkpoint, progress=False,
        )  # fmt: skip
        outcomes = []
        for seed in (rank, 10 + rank if rank == 1 else rank):  # then rank 1 reads other data
            try:
                train_lens(
                    model, TunedLens.from_model(model), _batches(seed=seed), config,
                    checkpoint_dir=checkpoint, resume=True, progress=False,
                )  # fmt: skip
                outcomes.append("resumed")
            except RunStateError as error:
                outcomes.append(f"refused: {error}")
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(outcomes))
    finally:
        dist.destroy_process_group()


def test_a_resume_where_one_rank_reads_other_data_is_refused_on_every_rank(tmp_path):
    """Every rank raises, so none waits forever for the others in a collective."""
    import torch.multiprocessing as mp

    from tests.conftest import skip_without_hooked_transformer

    skip_without_hooked_transformer()
    context = mp.spawn(
        _resume_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False
    )
    deadline = time.monotonic() + 300
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail("a rank still waits after 300 s: the ranks disagreed on the refusal")
    except mp.ProcessExitedException as exited:
        # Once in a full CI run gloo aborted a rank in its teardown ("terminate called
        # without an active exception", SIGABRT) after the rank had written its outcome;
        # that is not what is tested: a rank that failed before writing it still fails
        # below, as does any other exit.
        if exited.signal_name != "SIGABRT":
            raise
    for rank in range(2):
        first, second = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert first == "resumed"
        assert second.startswith("refused: the first 2 batches differ"), second
