"""`torchrun` on the device: one process in an NCCL group (gloo when the device is the
CPU) runs the fast fit, DDP training and the J-lens fit through hooklens's collectives
and ends with the lenses of a plain process.

One GPU holds one NCCL rank (NCCL refuses two ranks on the same GPU), and for a group of
one `hooklens.core.distributed` stands aside (`active()` is False), so the worker turns
the collectives on: the all-reduces, broadcasts and DDP's gradient averaging then run
through NCCL for real, over a world of one. Several GPUs are checked by
`tests/core/test_distributed.py`'s gloo runs, not here.

This file is also the worker's script (`_worker`, at the bottom).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hooklens import JacobianLens
from hooklens.core import distributed
from hooklens.training.fast_fit import fit_tuned_lens
from hooklens.training.loop import TrainConfig, train_lens
from tests.devices.test_device_discipline import _tokens

pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[2]
CONFIG = TrainConfig(steps=3, lr=1e-2, optimizer="sgd", matmul_dtype="float32")
PROMPTS = ["w5 w6 w7 w8 w9 w10 w11", "w10 w11 w12 w13 w14 w15", "w20 w30 w40 w50 w60 w70 w80"]


def _fit_batches() -> list[torch.Tensor]:
    return [_tokens(4, 16, seed) for seed in range(4)]


def _train_batches() -> list[torch.Tensor]:
    return [_tokens(2, 12, seed) for seed in range(10, 13)]


def _lenses(model) -> dict[str, torch.Tensor]:
    """The fast fit trained for 3 steps, and a J-lens fit: all their tensors, on the CPU."""
    tuned = fit_tuned_lens(model, _fit_batches(), progress=False)
    train_lens(model, tuned, _train_batches(), CONFIG, progress=False)
    jlens = JacobianLens.fit(model, PROMPTS, max_seq_len=8, skip_first_positions=1, progress=False)
    result = {f"tuned.{name}": value.detach().cpu() for name, value in tuned.state_dict().items()}
    result.update({f"J.{layer}": jlens.jacobian(layer).cpu() for layer in jlens.fitted_layers})
    return result


@pytest.fixture(scope="module")
def tokenizer_dir(word_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("worker-tokenizer")
    word_tokenizer.save_pretrained(folder)
    return folder


def test_torchrun_on_the_device_equals_one_plain_process(
    on_device, device, tokenizer_dir, tmp_path
):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "1", __file__, "--tokenizer", str(tokenizer_dir)]
    command += ["--out", str(tmp_path), "--device", str(device)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    record = json.loads((tmp_path / "rank0.json").read_text())
    backend = "nccl" if device.type == "cuda" else "gloo"
    assert record == {
        "backend": backend, "world_size": 1, "reduced": 2.0, "ddp": 1, "group_closed": True
    }  # fmt: skip
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)
    expected = _lenses(on_device)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        scale = float(value.abs().max())
        torch.testing.assert_close(got[name], value, atol=1e-5 * scale, rtol=1e-5)


# --- the torchrun worker ----------------------------------------------------------------


def _worker(argv: list[str]) -> None:
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from tests.tiny import make_bridge

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    distributed.active = dist.is_initialized  # a group of one, its collectives on
    wrapped = []

    class CountedDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, *arguments, **settings):
            wrapped.append(True)
            super().__init__(*arguments, **settings)

    torch.nn.parallel.DistributedDataParallel = CountedDDP  # type: ignore[misc]
    try:
        model = make_bridge(AutoTokenizer.from_pretrained(args.tokenizer), "llama", device=device)
        reduced = distributed.all_reduce_cpu_sum_(torch.tensor([2.0]))  # via the GPU on NCCL
        torch.save(_lenses(model), args.out / "rank0.pt")
        record = {"backend": dist.get_backend(), "world_size": distributed.world_size()}
        record.update(reduced=float(reduced.item()), ddp=len(wrapped))
    finally:
        distributed.leave()
    record["group_closed"] = not dist.is_initialized()
    (args.out / "rank0.json").write_text(json.dumps(record))


if __name__ == "__main__":
    _worker(sys.argv[1:])
