"""`hooklens train` trains a lens end to end, and survives SIGKILL with --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hooklens.cli import main as cli_main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris.",
    "Photosynthesis converts light energy into chemical energy in plants and algae.",
    "The Pacific Ocean is the largest and deepest of Earth's five oceanic divisions.",
    "Ada Lovelace is often regarded as the first computer programmer.",
    "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
    "The mitochondrion is an organelle found in the cells of most eukaryotes.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "texts.jsonl"
    rows = [f"{s} (Note {i}.)" for i in range(12) for s in SENTENCES]
    path.write_text("\n".join(json.dumps({"text": row}) for row in rows) + "\n")
    return path


def _arguments(corpus: Path, output: Path, model_class: str | None = "bridge") -> list[str]:
    # A bridge: it boots in about a second, where building a HookedTransformer converts
    # and processes the weights first (tens of seconds on a slow CPU, once per process).
    chosen = ["--model-class", model_class] if model_class else []
    return [
        "train", "--data", str(corpus), "--output", str(output), "--seq-len", "32",
        "--batch-size", "1", "--fast-fit-tokens", "64", "--steps", "6",
        "--checkpoint-every", "2", "--lr", "1e-3", "--no-progress", *chosen,
    ]  # fmt: skip


def _command(corpus: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "hooklens", *_arguments(corpus, output)]


def test_train_writes_a_lens_that_loads(corpus, tmp_path):
    from hooklens import TunedLens, models

    assert cli_main(_arguments(corpus, tmp_path / "run")) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [record["step"] for record in history["steps"]] == [1, 2, 3, 4, 5, 6]
    model = models.load("smollm2-135m", model_class="bridge")
    lens = TunedLens.load(tmp_path / "run" / "lens", model=model)
    assert any(p.abs().sum() > 0 for p in lens.parameters())  # not the identity
    assert cli_main(_arguments(corpus, tmp_path / "run")) == 2  # refuses to overwrite


def test_sigkilled_run_resumes_to_the_same_lens(corpus, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    straight = tmp_path / "straight"
    subprocess.run(_command(corpus, straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _command(corpus, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = killed / "checkpoint" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # right after the step-2 checkpoint
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "lens").exists()

    resumed = subprocess.run(
        [*_command(corpus, killed), "--resume"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((killed / "history.json").read_text())
    assert [record["step"] for record in history["steps"]] == [1, 2, 3, 4, 5, 6]
    expected = load_file(straight / "lens" / "params.safetensors")
    got = load_file(killed / "lens" / "params.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] - got[name]).abs().max() <= 1e-6, name


def test_bad_runs_are_refused_and_nothing_is_overwritten(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert cli_main(_arguments(corpus, run)) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in run.iterdir()] == ["notes.txt"]

    assert cli_main([*_arguments(corpus, tmp_path / "fresh"), "--resume"]) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli_main(_arguments(empty, tmp_path / "e")) == 2
    short = tmp_path / "short.txt"
    short.write_text("Too short.\n")
    assert cli_main(_arguments(short, tmp_path / "s")) == 2
    assert "no chunk of 32 tokens" in capsys.readouterr().err

    arguments = _arguments(corpus, tmp_path / "x", model_class=None)  # the default class
    assert cli_main([*arguments, "--model", "no-such-model-anywhere"]) == 2
    assert "no-such-model-anywhere" in capsys.readouterr().err


def test_overwrite_and_mismatched_resume(corpus, tmp_path, capsys, monkeypatch):
    logged = []

    class FakeRun:  # stands in for wandb, which is optional and not installed
        def log(self, record, step):
            logged.append((step, record["loss"]))

    fake_wandb = type(sys)("wandb")
    fake_wandb.init = lambda project, config: FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    run = tmp_path / "run"
    assert cli_main([*_arguments(corpus, run), "--steps", "2", "--wandb", "lenses"]) == 0
    assert [step for step, _ in logged] == [1, 2]
    assert cli_main([*_arguments(corpus, run), "--steps", "2", "--overwrite"]) == 0
    changed = _arguments(corpus, run)
    changed[changed.index("--seq-len") + 1] = "16"
    assert cli_main([*changed, "--steps", "2", "--resume"]) == 2
    assert "seq_len: 32 then, 16 now" in capsys.readouterr().err
