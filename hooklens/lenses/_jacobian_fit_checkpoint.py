"""Internal. The Jacobian-lens fit's checkpoint: writing it, reading and checking it, and
what a resume must repeat (the model, the settings, the prompts gone through).

The file is the reference's fit-checkpoint format (`jacobian_sum`, `n_done`, `next_idx`,
`source_layers`, `target_layer`, `skip_first`) with our record and checksum beside it
(`hooklens.artifacts.jlens_pt`: `FIT_RECORD_KEY`, `FIT_CHECKSUM_KEY`,
`verify_fit_checkpoint`, which `JacobianLens.load` checks too). `fit_jacobians`
(`hooklens.lenses.jacobian_estimator`) calls these between its rounds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from hooklens.artifacts import atomic_write, load_weights_only, sealed
from hooklens.artifacts.jlens_pt import (
    FIT_CHECKSUM_KEY,
    FIT_RECORD_KEY,
    START_OVER,
    verify_fit_checkpoint,
)
from hooklens.artifacts.provenance import PROVENANCE_KEY, check_provenance
from hooklens.core import distributed, fingerprint_of, same_model_name
from hooklens.errors import HooklensError, InputError, RunStateError, warn

_REFERENCE_KEYS = ("jacobian_sum", "n_done", "next_idx", "source_layers", "skip_first")


def write_checkpoint(
    path: Path,
    *,
    sums: dict[int, Tensor],
    n_done: int,
    next_idx: int,
    layers: list[int],
    n_layers: int,
    skip_first_positions: int,
    record: dict[str, Any],
    digests: Sequence[bytes],
) -> None:
    """Write the running sums at `path` (atomically, with our record and checksum)."""
    state = {
        "jacobian_sum": sums,
        "n_done": n_done,
        "next_idx": next_idx,
        "source_layers": layers,
        "target_layer": n_layers - 1,
        "skip_first": skip_first_positions,
        FIT_RECORD_KEY: {
            **record,
            "prompts_digest": digest_of_first(digests, next_idx),
            "world_size": distributed.world_size(),  # informational: any may resume
        },
    }
    state = sealed(state, FIT_CHECKSUM_KEY)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def prompt_digests(tokens: Sequence[Int[Tensor, "1 _pos"]]) -> list[bytes]:
    """A blake2b digest of each prompt's token ids (its shape included), in order.

    Prompts differ in length (`_pos`: jaxtyping checks no common size across them)."""
    digests = []
    for ids in tokens:
        ids = ids.to("cpu", torch.int64).contiguous()
        digest = hashlib.blake2b(repr(tuple(ids.shape)).encode(), digest_size=16)
        digest.update(ids.numpy().tobytes())
        digests.append(digest.digest())
    return digests


def digest_of_first(digests: Sequence[bytes], n: int) -> str:
    """The fingerprint of the first `n` prompts (those a checkpoint at `next_idx=n` went
    through), so that a resume may add prompts after them."""
    return hashlib.blake2b(b"".join(digests[:n]), digest_size=16).hexdigest()


def model_record(model: Any) -> dict[str, Any]:
    """The model's name and sizes, and a hash of its unembedding (another checkpoint or a
    fine-tune of the same architecture differs there)."""
    fingerprint = fingerprint_of(model)
    keys = ("model_name", "d_model", "n_layers", "d_vocab", "unembedding_hash")
    return {key: getattr(fingerprint, key) for key in keys}


def require_the_same_prompts_on_every_rank(digests: Sequence[bytes]) -> None:
    if not distributed.same_on_all_ranks(digest_of_first(digests, len(digests))):
        raise InputError(
            "under torchrun every rank must pass the same, whole list of prompts "
            "(fit_jacobians shards it over the ranks itself), but they differ between "
            "ranks: pass every rank the same prompts in the same order"
        )


def read_checkpoint(path: Path) -> tuple[dict[str, Any] | None, dict[int, Tensor] | None]:
    """`(entries, sums)` of the checkpoint at `path`, read by rank 0 alone (the rank that
    writes it): every rank gets its entries but the sums (`None`: no checkpoint there),
    rank 0 its sums too (`None` elsewhere); an unreadable, damaged or inconsistent file
    raises `RunStateError` on every rank."""
    entries: dict[str, Any] | None = None
    sums: dict[int, Tensor] | None = None
    error: Exception | None = None
    if distributed.is_primary() and path.is_file():
        try:
            state = load_weights_only(
                path, "a Jacobian-lens fit checkpoint", error=RunStateError, advice=START_OVER
            )
            entries, sums = _split_checkpoint(state, path)
        except (HooklensError, OSError) as caught:
            error = caught
    entries, error = distributed.broadcast_object((entries, error))
    if error is not None:
        raise error
    return entries, sums


def _split_checkpoint(state: Any, path: Path) -> tuple[dict[str, Any], dict[int, Tensor]]:
    if not isinstance(state, dict) or any(key not in state for key in _REFERENCE_KEYS):
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise RunStateError(
            f"{path} is not a Jacobian-lens fit checkpoint: expected the keys "
            f"{', '.join(_REFERENCE_KEYS)}, found {found}. Pass the checkpoint of a fit, "
            "or another checkpoint path to start a new fit"
        )
    verify_fit_checkpoint(state, path)
    _check_entry_types(state, path)
    sums = {int(layer): matrix for layer, matrix in state["jacobian_sum"].items()}
    entries = {key: value for key, value in state.items() if key != "jacobian_sum"}
    entries["sum_shapes"] = {layer: tuple(matrix.shape) for layer, matrix in sums.items()}
    return entries, sums


def _check_entry_types(state: dict[str, Any], path: Path) -> None:
    """Refuse entries of the wrong type or value (a damaged or hand-made checkpoint)."""

    def refuse(key: str, expected: str, value: Any) -> RunStateError:
        shown = repr(value) if not isinstance(value, Tensor) else f"a tensor {tuple(value.shape)}"
        return RunStateError(
            f"{path}: entry {key!r} should be {expected}, found {type(value).__name__} "
            f"{shown[:40]}. {START_OVER}"
        )

    for key in ("n_done", "next_idx", "skip_first"):
        if not _is_count(state[key]):
            raise refuse(key, "an integer ≥ 0", state[key])
    if "target_layer" in state and not _is_count(state["target_layer"]):
        raise refuse("target_layer", "an integer ≥ 0", state["target_layer"])
    layers = state["source_layers"]
    if not isinstance(layers, (list, tuple)) or not all(map(_is_count, layers)):
        raise refuse("source_layers", "a list of layer indices", layers)
    sums = state["jacobian_sum"]
    if not isinstance(sums, dict):
        raise refuse("jacobian_sum", "a {layer: tensor} dict", sums)
    for layer, matrix in sums.items():
        if not _is_count(layer):
            raise refuse("jacobian_sum", "keyed by layer indices", layer)
        if not isinstance(matrix, Tensor) or not matrix.is_floating_point() or matrix.ndim != 2:
            raise refuse(f"jacobian_sum[{layer}]", "a floating-point matrix", matrix)
        if not bool(torch.isfinite(matrix).all()):
            raise RunStateError(
                f"{path}: entry 'jacobian_sum[{layer}]' holds NaN or infinite entries. {START_OVER}"
            )
    if int(state["n_done"]) > int(state["next_idx"]):
        raise RunStateError(
            f"{path}: n_done is {state['n_done']}, more than the {state['next_idx']} prompts "
            f"the fit had gone through (next_idx): the checkpoint is inconsistent. "
            f"{START_OVER}"
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_resumable(
    entries: dict[str, Any],
    path: Path | None,
    *,
    layers: list[int],
    skip_first_positions: int,
    record: dict[str, Any],
    digests: Sequence[bytes],
    n_layers: int,
    d_model: int,
    lengths: Sequence[int],
) -> None:
    """Refuse (`RunStateError`, on every rank alike) a checkpoint this fit cannot
    continue to the lens an uninterrupted fit would give."""
    pairs: list[tuple[str, Any, Any]] = [
        ("source_layers", [int(layer) for layer in entries["source_layers"]], layers),
        ("skip_first_positions", int(entries["skip_first"]), skip_first_positions),
        ("target_layer", int(entries.get("target_layer", n_layers - 1)), n_layers - 1),
        ("summed layers", sorted(entries["sum_shapes"]), layers),
        ("matrix shapes", sorted(set(entries["sum_shapes"].values())), [(d_model, d_model)]),
    ]
    saved = entries.get(FIT_RECORD_KEY)
    if saved is None:
        warn(
            f"{path} records neither the model, max_seq_len nor the prompts it was made "
            "with (a reference checkpoint, or an older hooklens): it is resumed without "
            "checking them",
        )
    else:
        check_provenance(saved.get(PROVENANCE_KEY), str(path))
        pairs.append(("max_seq_len", saved.get("max_seq_len"), record["max_seq_len"]))
        pairs += [
            (f"model {key}", saved.get("model", {}).get(key), value)
            for key, value in record["model"].items()
        ]
    changed = [
        f"{name}: {_shown(then)} then, {_shown(now)} now"
        for name, then, now in pairs
        if not _same_setting(name, then, now)
    ]
    if changed:
        raise RunStateError(
            f"{path} was made by a fit with other settings ({'; '.join(changed)}): resume "
            "with the model and settings it was made with, or start a new fit with "
            "another checkpoint (hooklens fit-jlens: another --output, or --overwrite)"
        )
    _check_resumed_prompts(entries, path, digests)
    if saved is not None:  # our prompts, verified above: the count they give
        summed = sum(1 for n in lengths[: int(entries["next_idx"])] if n > skip_first_positions + 1)
        if int(entries["n_done"]) != summed:
            raise RunStateError(
                f"{path} counts {entries['n_done']} prompts summed, but the first "
                f"{entries['next_idx']} prompts it went through hold {summed} long enough to "
                f"fit on (more than {skip_first_positions + 1} tokens): its sums and count "
                f"disagree, and would resume to a lens scaled wrongly. {START_OVER}"
            )


def _check_resumed_prompts(
    entries: dict[str, Any], path: Path | None, digests: Sequence[bytes]
) -> None:
    next_idx = int(entries["next_idx"])
    if next_idx > len(digests):
        raise RunStateError(
            f"{path} has gone through the first {next_idx} prompts, but this fit has "
            f"only {len(digests)}: pass the prompts it was made with (more may follow; "
            "hooklens fit-jlens: --prompts of at least that many), or start a new fit "
            "with another checkpoint"
        )
    saved = (entries.get(FIT_RECORD_KEY) or {}).get("prompts_digest")
    now = digest_of_first(digests, next_idx)
    if saved is not None and saved != now:
        raise RunStateError(
            f"the first {next_idx} prompts are not those {path} went through (their "
            f"token ids hash to {saved[:12]}… then, {now[:12]}… now), so the sums would "
            "mix two corpora: pass the same prompts in the same order, cut at the same "
            "max_seq_len by the same tokenizer (more may follow), or start a new fit with "
            "another checkpoint"
        )


def _same_setting(name: str, then: Any, now: Any) -> bool:
    if name == "model model_name":  # "gpt2" and "openai-community/gpt2" are one model
        return then is not None and same_model_name(str(then), str(now))
    return then == now


def _shown(value: Any) -> str:
    if isinstance(value, str) and len(value) > 16:
        return repr(f"{value[:12]}…")  # a hash
    return repr(value)


def checkpoint_path(output: str | os.PathLike) -> Path:
    """Where `hooklens fit-jlens --output OUTPUT` keeps its running sums: beside the lens,
    `OUTPUT.fit-checkpoint.pt` (pass it as `checkpoint=` to resume the same way)."""
    output = Path(output)
    return output.with_name(f"{output.name}.fit-checkpoint.pt")
