"""The J-lens fit under torchrun (gloo, 2 CPU processes, a tiny bridge) equals the fit of
one process; a checkpoint resumes at any world size to the uninterrupted lens; a resume
that would mix another model, cut or corpus into the sums is refused.

The torchrun tests run this file as the workers' script (`_worker`, at the bottom):
each worker rebuilds the same tiny bridge from the tokenizer the test saved.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hooklens import JacobianLens
from hooklens.core import distributed
from hooklens.errors import InputError, RunStateError
from hooklens.lenses import jacobian_estimator as jacobian_fit
from hooklens.lenses.jacobian_estimator import fit_jacobians, prompt_jacobians, prompt_tokens

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"max_seq_len": 16, "skip_first_positions": 2, "dim_batch": 8, "progress": False}
EVERY = 4  # rounds [0, 4), [4, 8), [8, 9): 9 prompts are no multiple of 2 ranks or of 4
SHORT = (1, 3)  # 3 tokens with BOS, none valid: rank 1 skips all of its first round


def _prompt(index: int) -> str:
    """Words w4..w9 (the test tokenizer splits longer numbers), 10 to 13 of them."""
    if index in SHORT:
        return f"w{4 + index} w{5 + index}"
    words = random.Random(index).choices(range(4, 10), k=10 + index % 4)
    return " ".join(f"w{word}" for word in words)


PROMPTS = [_prompt(index) for index in range(9)]


@pytest.fixture(scope="module")
def bridge(model_zoo):
    return model_zoo["bridge-llama"]  # what every worker rebuilds (seed 0)


@pytest.fixture(scope="module")
def tokenizer_dir(word_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("worker-tokenizer")
    word_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(bridge):
    """`{n: {layer: J}}`: the float64 mean of the per-prompt Jacobians of PROMPTS[:n]."""
    per_prompt = []
    with jacobian_fit._frozen(bridge):
        for prompt in PROMPTS:
            tokens = prompt_tokens(bridge, prompt, SETTINGS["max_seq_len"])
            if tokens.shape[1] > SETTINGS["skip_first_positions"] + 1:
                per_prompt.append(
                    prompt_jacobians(bridge, tokens, [0, 1], dim_batch=8, skip_first_positions=2)
                )
            else:
                per_prompt.append(None)
    means = {}
    for n in range(1, len(PROMPTS) + 1):
        fitted = [jacobians for jacobians in per_prompt[:n] if jacobians is not None]
        means[n] = {layer: sum(j[layer].double() for j in fitted) / len(fitted) for layer in (0, 1)}
    return means


def _assert_equals_reference(jacobians: dict[int, torch.Tensor], expected: dict) -> None:
    assert sorted(jacobians) == sorted(expected)
    for layer, matrix in expected.items():
        scale = float(matrix.abs().max())
        torch.testing.assert_close(jacobians[layer].double(), matrix, rtol=1e-5, atol=1e-5 * scale)


def _torchrun(tmp_path: Path, tokenizer_dir: Path, *arguments: str, succeed: bool = True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", __file__, "--tokenizer", str(tokenizer_dir)]
    command += ["--out", str(tmp_path), *arguments]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == succeed, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _rank_results(tmp_path: Path) -> list[dict]:
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def test_two_processes_under_torchrun_equal_one_process(bridge, tokenizer_dir, reference, tmp_path):
    """Rank 1 skips every prompt of its first round and has none in the last one: the
    ranks still meet at every reduction, and both return the one-process mean."""
    checkpoint = tmp_path / "fit.pt"
    _torchrun(tmp_path, tokenizer_dir, "--checkpoint", str(checkpoint))
    ranks = _rank_results(tmp_path)
    assert ranks[0]["n"] == ranks[1]["n"] == len(PROMPTS) - len(SHORT)
    for layer in (0, 1):
        torch.testing.assert_close(ranks[0]["J"][layer], ranks[1]["J"][layer], rtol=0, atol=0)
    _assert_equals_reference(ranks[0]["J"], reference[len(PROMPTS)])
    single, n_single = fit_jacobians(bridge, PROMPTS, checkpoint_every=EVERY, **SETTINGS)
    assert n_single == ranks[0]["n"]
    for layer in (0, 1):
        torch.testing.assert_close(ranks[0]["J"][layer], single[layer], rtol=1e-5, atol=1e-7)
    # rank 0's checkpoint holds the global sums once, and loads as the same lens
    state = torch.load(checkpoint, weights_only=True)
    assert (state["n_done"], state["next_idx"]) == (n_single, len(PROMPTS))
    assert state["hooklens_fit"]["world_size"] == 2
    lens = JacobianLens.load(checkpoint, model=bridge)
    _assert_equals_reference({k: lens.jacobian(k) for k in (0, 1)}, reference[len(PROMPTS)])


def test_a_killed_two_process_fit_resumes_on_one_process(
    bridge, tokenizer_dir, reference, tmp_path
):
    """Rank 1 is SIGKILLed in its first prompt of the second round (prompt 5): torchrun
    stops rank 0 too, and the checkpoint holds the first round alone."""
    checkpoint = tmp_path / "fit.pt"
    done = _torchrun(
        tmp_path, tokenizer_dir, "--checkpoint", str(checkpoint), "--kill-at", "5", succeed=False
    )
    assert "SIGKILL" in done.stderr  # torchrun names the signal that ended rank 1
    state = torch.load(checkpoint, weights_only=True)
    assert (state["next_idx"], state["n_done"]) == (EVERY, 2)  # prompts 0 and 2; 1, 3 short
    jacobians, n = fit_jacobians(
        bridge, PROMPTS, checkpoint=checkpoint, checkpoint_every=EVERY, **SETTINGS
    )
    assert n == len(PROMPTS) - len(SHORT)
    _assert_equals_reference(jacobians, reference[len(PROMPTS)])


def test_a_one_process_fit_continues_on_two_processes(bridge, tokenizer_dir, reference, tmp_path):
    """One process fits the first 6 prompts (its checkpoint ends off a round boundary);
    two resume it with all 9 and end at the mean of all 9, the loaded sums counted once."""
    checkpoint = tmp_path / "fit.pt"
    fit_jacobians(bridge, PROMPTS[:6], checkpoint=checkpoint, checkpoint_every=EVERY, **SETTINGS)
    _torchrun(tmp_path, tokenizer_dir, "--checkpoint", str(checkpoint))
    ranks = _rank_results(tmp_path)
    assert ranks[0]["n"] == ranks[1]["n"] == len(PROMPTS) - len(SHORT)
    _assert_equals_reference(ranks[1]["J"], reference[len(PROMPTS)])
    assert torch.load(checkpoint, weights_only=True)["n_done"] == len(PROMPTS) - len(SHORT)


@pytest.mark.slow
def test_ranks_given_different_prompts_are_refused(tokenizer_dir, tmp_path):
    _torchrun(tmp_path, tokenizer_dir, "--prompts-by-rank")
    for result in _rank_results(tmp_path):
        assert "every rank must pass the same, whole list of prompts" in result["error"]


def test_hooklens_fit_jlens_under_torchrun_equals_one_process(
    bridge, tokenizer_dir, tmp_path, monkeypatch
):
    """`torchrun -m hooklens fit-jlens` (its `run` joins the process group itself, and
    the command closes it on every rank before it returns)."""
    from hooklens import models
    from hooklens.cli import main

    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    arguments = _cli_arguments(corpus)
    _torchrun(tmp_path, tokenizer_dir, "--cli", str(corpus))
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [
        {"world_size": 2, "rank": r, "rc": 0, "group_closed": True} for r in (0, 1)
    ]
    monkeypatch.setattr(models, "load", lambda name, **kwargs: bridge)
    assert main([*arguments, "--output", str(tmp_path / "one.pt")]) == 0
    one, two = (JacobianLens.load(tmp_path / n, model=bridge) for n in ("one.pt", "two.pt"))
    assert one.n_prompts == two.n_prompts > 0
    assert not jacobian_fit.checkpoint_path(tmp_path / "two.pt").exists()
    for layer in one.fitted_layers:
        torch.testing.assert_close(two.jacobian(layer), one.jacobian(layer), rtol=1e-5, atol=1e-7)


def _cli_arguments(corpus: Path) -> list[str]:
    return [
        "fit-jlens", "--data", str(corpus), "--prompts", str(len(PROMPTS)),
        "--max-seq-len", "16", "--skip-first", "2", "--checkpoint-every", str(EVERY),
        "--no-progress",
    ]  # fmt: skip


# --- a resume that would not give the uninterrupted lens is refused ---------------------


@pytest.fixture
def checkpoint(bridge, tmp_path):
    """A checkpoint of the first 4 prompts (next_idx = 4)."""
    path = tmp_path / "fit.pt"
    fit_jacobians(bridge, PROMPTS[:EVERY], checkpoint=path, checkpoint_every=EVERY, **SETTINGS)
    return path


def _resume(model, checkpoint, prompts=PROMPTS, **changes):
    settings = {**SETTINGS, "checkpoint_every": EVERY, **changes}
    return fit_jacobians(model, prompts, checkpoint=checkpoint, **settings)


def test_another_model_is_refused(model_zoo, checkpoint):
    with pytest.raises(RunStateError, match="model model_name: 'tiny-llama' then, 'tiny-gpt2'"):
        _resume(model_zoo["bridge-gpt2"], checkpoint)  # same sizes, another model


def test_other_weights_under_the_same_name_are_refused(word_tokenizer, checkpoint):
    from tests.conftest import make_bridge

    other = make_bridge(word_tokenizer, "llama", seed=1)
    with pytest.raises(RunStateError, match="model unembedding_hash") as refused:
        _resume(other, checkpoint)
    assert "model_name" not in str(refused.value) and "another --output" in str(refused.value)


def test_another_max_seq_len_is_refused(bridge, checkpoint):
    with pytest.raises(RunStateError, match="max_seq_len: 16 then, 12 now"):
        _resume(bridge, checkpoint, max_seq_len=12)


def test_other_prompts_before_the_checkpoint_are_refused(bridge, checkpoint):
    swapped = [PROMPTS[2], PROMPTS[1], PROMPTS[0], *PROMPTS[3:]]
    with pytest.raises(RunStateError, match="the first 4 prompts are not those"):
        _resume(bridge, checkpoint, prompts=swapped)


def test_fewer_prompts_than_the_checkpoint_went_through_are_refused(bridge, checkpoint):
    with pytest.raises(RunStateError, match="first 4 prompts, but this fit has only 3"):
        _resume(bridge, checkpoint, prompts=PROMPTS[:3])


def test_another_skip_first_is_refused_with_every_change_named(bridge, checkpoint):
    with pytest.raises(RunStateError, match="skip_first_positions: 2 then, 1 now; max_seq_len"):
        _resume(bridge, checkpoint, skip_first_positions=1, max_seq_len=15)


def test_another_dim_batch_resumes_to_the_same_lens(bridge, checkpoint, reference):
    jacobians, _ = _resume(bridge, checkpoint, dim_batch=5)
    _assert_equals_reference(jacobians, reference[len(PROMPTS)])


def test_a_reference_checkpoint_without_our_record_resumes_with_a_warning(
    bridge, checkpoint, reference
):
    state = torch.load(checkpoint, weights_only=True)
    del state["hooklens_fit"], state["hooklens_fit_sha256"]  # the reference's keys alone
    torch.save(state, checkpoint)
    with pytest.warns(UserWarning, match="resumed without checking them"):
        jacobians, _ = _resume(bridge, checkpoint)
    _assert_equals_reference(jacobians, reference[len(PROMPTS)])


def test_a_finished_checkpoint_resumes_to_its_lens_without_new_work(
    bridge, checkpoint, reference, monkeypatch
):
    def no_more_work(*args, **kwargs):
        raise AssertionError("a finished fit has no prompt left to compute")

    monkeypatch.setattr(jacobian_fit, "prompt_jacobians", no_more_work)
    jacobians, n = _resume(bridge, checkpoint, prompts=PROMPTS[:EVERY])
    assert n == 2
    _assert_equals_reference(jacobians, reference[EVERY])


def test_our_checkpoint_loads_in_transformer_lens_and_hooklens(bridge, checkpoint, reference):
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

    theirs = TLJacobianLens.load(str(checkpoint))
    ours = JacobianLens.load(checkpoint, model=bridge)
    assert theirs.n_prompts == ours.n_prompts == 2
    assert "hooklens_fit" not in theirs.metadata  # our entry is beside the reference's
    _assert_equals_reference(dict(theirs.jacobians), reference[EVERY])
    _assert_equals_reference({k: ours.jacobian(k) for k in (0, 1)}, reference[EVERY])


def test_a_token_id_outside_the_vocabulary_is_refused_before_any_work(bridge):
    with pytest.raises(InputError, match=r"prompts\[1\] holds 1 id"):
        fit_jacobians(bridge, [PROMPTS[0], [2, 5, 96, 7, 8]], **SETTINGS)


# --- the torchrun worker ----------------------------------------------------------------


def _kill_on(model, prompt: str) -> None:
    """SIGKILL this process when the fit reaches `prompt` (as the OOM killer would)."""
    target = prompt_tokens(model, prompt, SETTINGS["max_seq_len"]).cpu()
    real = jacobian_fit.prompt_jacobians

    def dies_there(model, tokens, *args, **kwargs):
        if torch.equal(tokens.cpu(), target):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(model, tokens, *args, **kwargs)

    jacobian_fit.prompt_jacobians = dies_there


def _cli_worker(model, corpus: str, out: Path) -> None:
    """`hooklens fit-jlens` on this rank, the tiny bridge standing in for the hub's."""
    import torch.distributed as dist

    from hooklens import models
    from hooklens.cli import main

    models.load = lambda name, **kwargs: model
    seen: dict = {}
    leave = distributed.leave

    def leave_and_record(**kwargs) -> None:  # the group as the command leaves it
        seen.update(world_size=distributed.world_size(), rank=distributed.rank())
        leave(**kwargs)

    distributed.leave = leave_and_record
    rc = main([*_cli_arguments(Path(corpus)), "--output", str(out / "two.pt")])
    record = {**seen, "rc": rc, "group_closed": not dist.is_initialized()}
    (out / f"rank{seen['rank']}.json").write_text(json.dumps(record))


def _worker(argv: list[str]) -> None:
    from transformers import AutoTokenizer

    from tests.conftest import make_bridge

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--prompts-by-rank", action="store_true")
    parser.add_argument("--cli")
    args = parser.parse_args(argv)
    model = make_bridge(AutoTokenizer.from_pretrained(args.tokenizer), "llama")
    if args.cli:
        return _cli_worker(model, args.cli, args.out)  # its `run` joins the group
    distributed.init_from_environment()
    prompts = PROMPTS[distributed.rank() :] if args.prompts_by_rank else PROMPTS
    if args.kill_at is not None and distributed.rank() == 1:
        _kill_on(model, PROMPTS[args.kill_at])
    try:
        jacobians, n = fit_jacobians(
            model, prompts, checkpoint=args.checkpoint, checkpoint_every=EVERY, **SETTINGS
        )
        result: dict = {"J": jacobians, "n": n}
    except InputError as error:
        result = {"error": str(error)}
    torch.save(result, args.out / f"rank{distributed.rank()}.pt")
    _leave_the_group()


def _leave_the_group() -> None:
    """Meet, then close the group: a rank that exits with gloo's pairs still open can
    abort in teardown ("terminate called without an active exception", seen in CI)."""
    import torch.distributed as dist

    distributed.barrier()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1:])
