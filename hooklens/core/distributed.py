"""Data parallelism through torch.distributed, as `torchrun` sets it up.

`torchrun --nproc_per_node N -m hooklens train ...` starts N processes with `RANK`,
`WORLD_SIZE` and `MASTER_ADDR` in their environment; `init_from_environment` joins
them into a process group (NCCL on CUDA, gloo on CPU). Each rank then reads every
N-th chunk of the token stream (`shard`), so one global batch holds the same chunks
as a single-process batch of N times the size, and DDP averages the gradients.
Outside torchrun every function here is a no-op for one process.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

from hooklens._checks import available_device
from hooklens.errors import InputError

T = TypeVar("T")


def init_from_environment(device: torch.device | str | None = None) -> bool:
    """Join the process group torchrun described; `False` when not under torchrun."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = torch.device(device).type == "cuda" if device is not None else False
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def command_device(requested: str | None) -> str:
    """The device a command runs on: `--device` as given, else cuda if there is a GPU,
    else cpu. One this machine lacks is refused before anything loads (`InputError`)."""
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    available_device(device, f"--device {device}")
    return device


def rank_device(device: str) -> str:
    """Under torchrun each rank takes the GPU of its local rank (`cuda` → `cuda:LOCAL_RANK`)."""
    if device == "cuda" and world_size() > 1:
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_primary() -> bool:
    """Whether this process writes files and shows progress (rank 0)."""
    return rank() == 0


def shard(items: Iterable[T]) -> Iterator[T]:
    """This rank's items: every `world_size()`-th one, starting at `rank()`."""
    return itertools.islice(items, rank(), None, world_size())


def backend_device() -> torch.device:
    """The device the process group's collectives run on: this rank's current GPU under
    NCCL (`init_from_environment` sets it to `LOCAL_RANK`), the CPU under gloo or
    without a group."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (a no-op for one process), wherever it lives: a
    tensor elsewhere than the backend's device (a CPU tensor under NCCL, which reduces
    CUDA tensors only) goes through `backend_device()` and back."""
    if not active():
        return tensor
    device = backend_device()
    if device.type == "cuda" and tensor.device.type != "cuda":
        reduced = tensor.to(device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        tensor.copy_(reduced)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def mean_over_ranks(value: float) -> float:
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=backend_device())
    return all_reduce_sum_(tensor).item() / world_size()


def broadcast_object(value: T) -> T:
    """Rank 0's `value` on every rank (returned unchanged for one process)."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if active():
        dist.barrier()


def leave(*, meet: bool = True) -> None:
    """Close the process group this process joined (a no-op when there is none).

    A rank that exits with gloo's connections open can abort in teardown ("terminate
    called without an active exception", exit -6) after its work is done, so a
    command ends by meeting the other ranks and closing the group. After an error pass
    `meet=False`: the other ranks may never arrive at the barrier.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if meet and dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def shard_blocks(model: torch.nn.Module, *, cpu_offload: bool = False) -> torch.nn.Module:
    """Shard each transformer block's weights over the ranks with PyTorch's FSDP2.

    For a model that does not fit on one device: each rank keeps 1/N of every block and
    all-gathers a block's weights just before its forward (the model is frozen, so
    nothing is reduced). The embedding, final norm and unembedding stay whole on every
    rank because the lens reads them. `cpu_offload` keeps the shards in CPU memory
    between uses (CUDA only). Call after `init_from_environment()`, before training.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise InputError(f"{type(model).__name__} has no `blocks` list to shard")
    if not active():
        raise InputError("sharding needs several processes: start with torchrun")
    policy = CPUOffloadPolicy() if cpu_offload else None
    for block in blocks:
        if policy is None:
            fully_shard(block)
        else:
            fully_shard(block, offload_policy=policy)
    return model


def all_reduce_cpu_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a CPU `tensor` over ranks in place, on either backend (a no-op for one process):
    `all_reduce_sum_`, which sends it through this rank's GPU under NCCL."""
    return all_reduce_sum_(tensor)


def same_on_all_ranks(value: str) -> bool:
    """Whether every rank passed the `value` rank 0 passed; the same answer on every rank
    (so that all of them raise together, none waiting for the others in a collective)."""
    if not active():
        return True
    differs = torch.tensor([float(broadcast_object(value) != value)], device="cpu")
    return all_reduce_cpu_sum_(differs).item() == 0
