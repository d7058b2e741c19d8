"""A training run's checkpoint: claiming its directory, saving, checking and resuming it,
and the digest of the batches it consumed.

A checkpoint (lens, optimiser, scheduler, step, data position, RNG, the batches'
digests, the run's `provenance`: versions, model, config) is one `torch.save`d dict,
written atomically with its checksum (`CHECKSUM_KEY`); a resume refuses it
(`RunStateError`, naming the file) unless it is whole, consistent, and was made with the
same config, world size and batches, and warns when it was written under another
transformers or TransformerLens version (`ProvenanceWarning`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hooklens.artifacts import atomic_write, load_weights_only, seal_matches, sealed
from hooklens.artifacts.provenance import PROVENANCE_KEY, check_provenance
from hooklens.core import distributed
from hooklens.errors import InputError, MissingFileError, OutputExistsError, RunStateError, warn
from hooklens.lenses.tuned import TunedLens

CHECKPOINT_FILE = "checkpoint.pt"
CHECKSUM_KEY = "checkpoint_sha256"
"""`artifacts.content_sha256` of every other entry of a checkpoint, checked on resume."""
START_OVER = (
    "Delete it to start the run over (hooklens train: --overwrite instead of --resume; "
    "train_lens: overwrite=True)"
)
"""The advice of a refusal to resume a training checkpoint."""
STATE_TYPES: dict[str, tuple[type, str]] = {
    "config": (dict, "the TrainConfig as a dict"),
    "lens": (dict, "the lens's state dict"),
    "optimizer": (dict, "the optimiser's state dict"),
    "scheduler": (dict, "the schedule's state dict"),
    "rng": (Tensor, "the CPU random state (a uint8 tensor)"),
    "step": (int, "the number of steps taken"),
    "consumed": (int, "the number of batches consumed"),
    "history": (list, "one record per step"),
}
"""The entries every training checkpoint holds: `(type, meaning)` of each."""


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Write `state` with its checksum (`CHECKSUM_KEY`), which a resume verifies."""
    state = sealed(state, CHECKSUM_KEY)
    atomic_write(directory / CHECKPOINT_FILE, lambda tmp: torch.save(state, tmp))


class BatchDigest:
    """A running hash of the batches this rank consumed, so that a resume can tell
    whether `token_batches` yields what it yielded before (same data, same order)."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=8)

    def add(self, tokens: Tensor) -> None:
        tokens = tokens.detach().to("cpu", torch.int64).contiguous()
        self._hash.update(repr(tuple(tokens.shape)).encode())
        self._hash.update(tokens.numpy().tobytes())

    def over_ranks(self) -> list[str]:
        """Every rank's digest (hex), in rank order; the same list on every rank."""
        digests = torch.zeros(distributed.world_size(), dtype=torch.int64, device="cpu")
        digests[distributed.rank()] = int.from_bytes(self._hash.digest(), "big", signed=True)
        distributed.all_reduce_sum_(digests)  # through the GPU under NCCL
        return [value.to_bytes(8, "big", signed=True).hex() for value in digests.tolist()]


def load_checkpoint(
    directory: Path | None, differences: Callable[[dict[str, Any]], list[str]]
) -> dict[str, Any]:
    """The checkpoint to resume, refused unless it is whole and consistent and was made
    by as many processes as this run has, with a config in which `differences` (the
    run's `TrainConfig.differences`) finds nothing.

    A checkpoint records the checksum of its content (`CHECKSUM_KEY`); a flipped bit,
    a truncation or an edit is a `RunStateError` naming the file, never a resume with
    other numbers. A checkpoint of hooklens before the checksum is resumed with a
    warning: the zip archive's CRC-32 still covers its bytes, and its step, batch count
    and history are still checked against each other.
    """
    if directory is None or not (directory / CHECKPOINT_FILE).is_file():
        raise MissingFileError(
            f"no {CHECKPOINT_FILE} to resume from in {directory}: train without "
            "resume=True to start the run"
        )
    path = directory / CHECKPOINT_FILE
    state = load_weights_only(path, "a training checkpoint", error=RunStateError, advice=START_OVER)
    check_state(state, path)
    check_provenance(state.get(PROVENANCE_KEY), str(path))
    if changed := differences(state["config"]):
        raise RunStateError(
            f"the checkpoint in {directory} was made with another TrainConfig "
            f"({'; '.join(changed)}): resume with the checkpoint's values"
        )
    if state.get("world_size", 1) != distributed.world_size():
        raise RunStateError(
            f"the checkpoint was made by {state.get('world_size', 1)} processes; resume "
            f"with as many (this run has {distributed.world_size()}) so that every rank "
            "reads the shard it had"
        )
    return state


def check_state(state: Any, path: Path) -> None:
    """Refuse a checkpoint that fails its checksum, lacks an entry, holds one of the
    wrong type, or whose step, batch count and history disagree."""
    if not isinstance(state, dict):
        raise RunStateError(
            f"{path} holds a {type(state).__name__}, not a training checkpoint (a dict of "
            f"{', '.join(STATE_TYPES)}). {START_OVER}"
        )
    if CHECKSUM_KEY in state:
        if not seal_matches(state, CHECKSUM_KEY):
            raise RunStateError(
                f"{path} does not match the checksum it records ({CHECKSUM_KEY}): it was "
                "changed or damaged after it was saved, so it would resume with other "
                f"numbers. {START_OVER}"
            )
    else:
        warn(
            f"{path} was written by a hooklens without checkpoint checksums: its content "
            "cannot be verified beyond the file's CRC-32. If in doubt, start the run over "
            "(hooklens train: --overwrite)",
        )
    for key, (kind, meaning) in STATE_TYPES.items():
        value = state.get(key)
        wrong = not isinstance(value, kind) or isinstance(value, bool)
        if wrong or (isinstance(value, int) and value < 0):
            found = "nothing" if key not in state else f"a {type(value).__name__}"
            raise RunStateError(
                f"{path}: entry {key!r} should be {meaning}, found {found}. {START_OVER}"
            )
    step, consumed, history = state["step"], state["consumed"], state["history"]
    per_step = state["config"].get("grad_accumulation", 1)
    steps_recorded = [
        record.get("step") if isinstance(record, dict) else None for record in history
    ]
    if steps_recorded != list(range(1, step + 1)) or consumed != step * per_step:
        raise RunStateError(
            f"{path} is inconsistent: step {step}, {consumed} batches consumed (expected "
            f"{step} × grad_accumulation {per_step}), and a history of {len(history)} steps. "
            f"{START_OVER}"
        )


def restore_checkpoint(
    path: Path,
    state: dict[str, Any],
    lens: TunedLens,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> None:
    """Load a checked checkpoint's states into the run; one made for another lens
    (other layers or width) is a `RunStateError`, not a raw torch error."""
    try:
        lens.load_state_dict(state["lens"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunStateError(
            f"{path} does not fit this run's lens or optimiser ({reason[:200]}): it was "
            f"made for another model or lens. Resume with the model it was made with. "
            f"{START_OVER}"
        ) from None


def start_of(state: dict[str, Any], path: Path, lens: TunedLens) -> dict[str, Tensor] | None:
    """The lens's state at the start of the run (`"start"`, which checkpoints hold since
    runs keep the better of start and fine-tune per layer), or None in an older one."""
    start = state.get("start")
    if start is None:
        return None
    expected = {k: tuple(v.shape) for k, v in lens.state_dict().items()}
    found = (
        {k: tuple(v.shape) for k, v in start.items() if isinstance(v, Tensor)}
        if isinstance(start, dict)
        else None
    )
    if found != expected:
        raise RunStateError(
            f"{path}: entry 'start' should be the state dict of this run's lens at its start "
            f"({len(expected)} tensors of its shapes), found "
            f"{'other tensors' if found is not None else 'a ' + type(start).__name__}. "
            f"{START_OVER}"
        )
    return start


def skip_consumed(batches: Iterator[Tensor], consumed: int, digest: BatchDigest) -> bool:
    """Read (and hash) the `consumed` batches the checkpoint has already trained on;
    `False` when the batches end before that."""
    for _ in range(consumed):
        tokens = next(batches, None)
        if tokens is None:
            return False
        digest.add(tokens)
    return True


def claim_checkpoint_dir(
    checkpoint_dir: str | os.PathLike | None, *, resume: bool, overwrite: bool
) -> None:
    """Refuse to replace a checkpoint unless `overwrite`; with it, remove the old one now,
    not at the first new checkpoint: a run that dies before then must not leave the old
    run's checkpoint for a later resume to continue."""
    if resume and overwrite:
        raise InputError(
            "resume=True continues the checkpoint, overwrite=True replaces it: pick one"
        )
    if checkpoint_dir is None or resume:
        return
    existing = Path(checkpoint_dir) / CHECKPOINT_FILE
    if existing.is_file() and not overwrite:
        raise OutputExistsError(
            f"{existing} holds a checkpoint: pass resume=True to continue its run, "
            "overwrite=True to replace it, or another checkpoint_dir"
        )
    if distributed.is_primary():
        existing.unlink(missing_ok=True)
    distributed.barrier()
