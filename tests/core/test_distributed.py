"""Data-parallel training (gloo, 2 processes) ends where one process with the same
global batch ends: the fast fit's moments and the KL gradients are summed over ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from hooklens.core import distributed
from hooklens.training.data import batches
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.loop import TrainConfig, train_lens
from tests.conftest import VOCAB, make_hooked

GLOBAL_BATCH = 4
# float32 matmuls and Adam: the comparison is of the arithmetic, not of bf16 rounding
# (Muon orthogonalises its update in bf16, which turns the last-bit differences of a
# two-process gradient sum into 1e-5 differences of the lens).
CONFIG = TrainConfig(
    steps=4,
    lr=1e-2,
    optimizer="adam",
    grad_accumulation=2,
    checkpoint_every=2,
    matmul_dtype="float32",
)


def _chunks() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(4, VOCAB, (12,), generator=generator) for _ in range(40)]


def _train(fit_chunks, train_chunks, batch_size: int, checkpoint_dir: Path, fsdp=False):
    model = make_hooked("RMS", processing=True)
    if fsdp:
        distributed.shard_blocks(model)
        weight = model.blocks[0].attn.W_Q  # a DTensor: this rank holds half its heads
        assert weight.to_local().shape[0] * 2 == weight.shape[0]
    lens = fit_tuned_lens(model, batches(fit_chunks, batch_size), progress=False)
    train_lens(
        model,
        lens,
        batches(train_chunks, batch_size),
        CONFIG,
        checkpoint_dir=checkpoint_dir,
        progress=False,
    )
    return lens


def _worker(rank: int, world: int, init_file: str, out: str, fsdp: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        chunks = _chunks()
        lens = _train(
            list(distributed.shard(chunks[:8])),
            distributed.shard(chunks[8:]),
            GLOBAL_BATCH // world,
            Path(out) / "checkpoint",
            fsdp=fsdp,
        )
        save_file(lens.state_dict(), str(Path(out) / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "ddp+fsdp-blocks"])
def test_two_gloo_processes_equal_one_process(tmp_path, fsdp):
    """With `fsdp`, each rank holds half of every block (FSDP2) and still ends equal."""
    chunks = _chunks()
    single = _train(chunks[:8], chunks[8:], GLOBAL_BATCH, tmp_path / "single")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), fsdp), nprocs=2, join=True)
    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in range(2)]
    checkpoint = torch.load(tmp_path / "checkpoint" / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and checkpoint["step"] == CONFIG.steps
    for name, expected in single.state_dict().items():
        assert not torch.equal(expected, torch.zeros_like(expected)), name  # it trained
        torch.testing.assert_close(ranks[0][name], ranks[1][name], atol=0, rtol=0)
        torch.testing.assert_close(ranks[0][name], expected, atol=1e-5, rtol=1e-4)


def test_one_process_is_its_own_shard():
    assert not distributed.active()
    with pytest.raises(ValueError, match="torchrun"):
        distributed.shard_blocks(make_hooked())
    assert list(distributed.shard(range(5))) == [0, 1, 2, 3, 4]
    assert distributed.mean_over_ranks(2.5) == 2.5


@pytest.mark.slow
def test_torchrun_cli_equals_a_single_process_run(tmp_path):
    """`torchrun --nproc_per_node 2 -m hooklens train` on SmolLM2 (few tokens, 3 steps).

    SGD in float32: its step is linear in the gradient (Adam divides near-zero
    gradients by their own size, so summation order flips their sign). From the
    identity: a fast fit on a few hundred tokens is a badly conditioned
    576-wide solve that amplifies the ranks' different summation order (the fit's
    all-reduce is checked on the tiny model above, where it is well posed).
    """
    corpus = tmp_path / "texts.txt"
    corpus.write_text(
        "\n".join(f"Sentence {i} of a small corpus about the history of Paris." for i in range(60))
    )
    arguments = [
        "-m", "hooklens", "train", "--data", str(corpus), "--seq-len", "24",
        "--batch-size", "2", "--fast-fit-tokens", "0", "--steps", "3", "--optimizer", "sgd",
        "--matmul-dtype", "float32", "--model-class", "bridge",  # a bridge boots in a second
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run(
        [sys.executable, *arguments, "--output", str(tmp_path / "one")], check=True, env=env
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    subprocess.run(
        [*torchrun, "--master_port", "29517", *arguments[1:], "--output", str(tmp_path / "two")],
        check=True,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    one = load_file(tmp_path / "one" / "lens" / "params.safetensors")
    two = load_file(tmp_path / "two" / "lens" / "params.safetensors")
    scale = max(float(p.abs().max()) for p in one.values())
    assert scale > 0  # trained, not the identity
    for name, expected in one.items():
        torch.testing.assert_close(two[name], expected, atol=1e-3 * scale, rtol=1e-3)
