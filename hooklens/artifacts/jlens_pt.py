"""J-lens `.pt` payloads: the reference's keys, our record and checksum, and fit checkpoints.

A J-lens `.pt` (the reference's and TransformerLens's artifact format) is a dict with
`J` ({source layer: [d_model, d_model]}), `n_prompts`, `source_layers`, `d_model` and
`metadata`; a fit checkpoint holds running sums instead (`jacobian_sum`, `n_done`,
`next_idx`, ...). Ours add `RECORD_KEY` (what a load checks: the model's layer count and
fingerprint, the target layer, the component) and `CHECKSUM_KEY` (`content_sha256` of
every other entry); our fit checkpoints `FIT_RECORD_KEY` and `FIT_CHECKSUM_KEY`, which
`verify_fit_checkpoint` checks (here alone: the estimator's resume and
`JacobianLens.load` both call it).
`parse_reference` reads either format, `verified_record` checks our entries: each
refusal is a `LensFileError` naming the file and the key. Reading the file itself is
`reference_pt.load_weights_only`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hooklens.artifacts.lens_dir import FIX_CONFIG, check_json_fields
from hooklens.artifacts.reference_pt import seal_matches
from hooklens.core import ModelFingerprint, normalize_component
from hooklens.errors import (
    HooklensError,
    InputError,
    InputTypeError,
    LensFileError,
    RunStateError,
    warn,
)

REFERENCE_SUFFIX = ".pt"
"""The file suffix of the reference's J-lens format."""
RECORD_KEY = "hooklens"
"""Our entry in a `.pt` lens, beside the reference's keys: what a load checks (the
model's layer count and fingerprint, the target layer, the lens's component)."""
CHECKSUM_KEY = "hooklens_sha256"
"""Our `.pt` lens's checksum: `content_sha256` of every other entry."""
RECORD_FORMAT = 1
"""The version of `RECORD_KEY`'s layout this hooklens writes and reads."""


@dataclass
class JLensRecord:
    """Our entry of a `.pt` lens (`RECORD_KEY`), checked."""

    n_layers: int
    target_layer: int
    component: str
    fingerprint: ModelFingerprint


@dataclass
class _RecordSchema:
    """The keys of `RECORD_KEY` (what `check_json_fields` checks)."""

    format: int
    n_layers: int
    target_layer: int
    component: str
    fingerprint: dict[str, Any]


def recorded_component(value: Any, source: str) -> str:
    """The component a J-lens file records, checked (`LensFileError` naming `source`)."""
    try:
        component = normalize_component(value)
    except (InputError, InputTypeError) as error:
        raise LensFileError(f"{source}: key 'component': {error}. {FIX_CONFIG}") from None
    if component == "resid_mid":
        raise LensFileError(
            f"{source}: key 'component' is 'resid_mid', but a Jacobian lens reads "
            f"resid_pre or resid_post. {FIX_CONFIG}"
        )
    return component


def verified_record(payload: Any, path: Path) -> JLensRecord | None:
    """Our entry of a `.pt` lens or fit checkpoint, after checking the file's checksum;
    `None` for a foreign file (no hooklens keys at all).

    A file with some of our keys but not all (a damaged key name, or an edit) is
    refused: it cannot be told from a file whose checksum was removed.
    """
    if not isinstance(payload, dict):
        return None
    if "jacobian_sum" in payload:  # a fit checkpoint: its own record and checksum
        verify_fit_checkpoint(payload, path, error=LensFileError)
        return None
    ours = [key for key in (RECORD_KEY, CHECKSUM_KEY) if key in payload]
    if not ours:
        return None
    if len(ours) == 1:
        missing = CHECKSUM_KEY if ours == [RECORD_KEY] else RECORD_KEY
        raise LensFileError(
            f"{path} has the key {ours[0]!r} of a hooklens Jacobian lens but not "
            f"{missing!r}: the file was damaged or edited, and cannot be verified. Save "
            "or fit the lens again."
        )
    if not seal_matches(payload, CHECKSUM_KEY):
        raise LensFileError(
            f"{path} does not match the checksum it records ({CHECKSUM_KEY}): an entry "
            "(a matrix, n_prompts, a key) was changed or damaged after saving, so it would "
            "load with other numbers. Save or fit the lens again (or download it again)."
        )
    source = f"{path} (entry {RECORD_KEY!r})"
    entry = payload[RECORD_KEY]
    check_json_fields(_RecordSchema, entry, source, f"{RECORD_KEY}.")
    if entry["format"] != RECORD_FORMAT:
        raise LensFileError(
            f"{path} was saved by a newer hooklens (its {RECORD_KEY} format is "
            f"{entry['format']}, this version reads {RECORD_FORMAT}): upgrade hooklens"
        )
    check_json_fields(ModelFingerprint, entry["fingerprint"], source, f"{RECORD_KEY}.fingerprint.")
    fingerprint = ModelFingerprint.from_dict(entry["fingerprint"])
    if not entry["n_layers"] == fingerprint.n_layers == entry["target_layer"] + 1:
        raise LensFileError(
            f"{source}: n_layers {entry['n_layers']}, target_layer {entry['target_layer']} "
            f"and the fingerprint's n_layers {fingerprint.n_layers} disagree (the target is "
            "the last block). Save or fit the lens again."
        )
    return JLensRecord(
        n_layers=entry["n_layers"],
        target_layer=entry["target_layer"],
        component=recorded_component(entry["component"], source),
        fingerprint=fingerprint,
    )


def parse_reference(payload: Any, path: Path) -> tuple[dict[int, Tensor], int, dict[str, Any]]:
    """`(jacobians, n_prompts, metadata)` of a reference artifact or fit checkpoint.

    Raises:
        LensFileError: neither format, or an entry of the wrong type or value (naming
            the file and the key).
    """
    if not isinstance(payload, dict):
        raise LensFileError(
            f"{path} holds a {type(payload).__name__}, not a Jacobian lens: expected a dict "
            "with a 'J' key (artifact) or 'jacobian_sum' (fit checkpoint)"
        )
    if "J" in payload:
        matrices_key = "J"
        n_prompts = _count(payload, "n_prompts", path)
        divide = 1
    elif "jacobian_sum" in payload:  # running sums of a fit in progress
        matrices_key = "jacobian_sum"
        count_key = "n_done" if payload.get("n_done") is not None else "n_prompts"
        n_prompts = _count(payload, count_key, path)
        if n_prompts <= 0:
            raise LensFileError(
                f"{path} is a fit checkpoint of {n_prompts} prompts: nothing fitted yet. "
                "Let the fit run further (it resumes from the checkpoint), then load it"
            )
        next_idx: Any = payload.get("next_idx")
        if _is_int(next_idx) and n_prompts > int(next_idx):
            raise LensFileError(
                f"{path}: {count_key} is {n_prompts}, more than the {next_idx} prompts the "
                "fit had gone through (next_idx): the checkpoint is damaged or was edited. "
                "Delete it and fit again"
            )
        divide = n_prompts
    else:
        found = sorted(map(str, payload))[:6]
        raise LensFileError(
            f"{path} is not a Jacobian lens: expected a 'J' key (artifact) or "
            f"'jacobian_sum' (fit checkpoint), found {found}"
        )
    matrices = payload[matrices_key]
    if not isinstance(matrices, dict) or not matrices:
        raise LensFileError(
            f"{path}: key {matrices_key!r} should be a non-empty {{layer: tensor}} dict, found "
            f"{_kind(matrices)}"
        )
    jacobians: dict[int, Tensor] = {}
    for layer, matrix in matrices.items():
        where = f"{path}: {matrices_key}[{layer!r}]"
        if _is_int(layer) or (isinstance(layer, str) and layer.isdigit()):
            index = int(layer)
        else:
            raise LensFileError(
                f"{where}: a layer should be an integer (a block index), found {_kind(layer)}"
            )
        if not isinstance(matrix, Tensor) or not matrix.is_floating_point():
            raise LensFileError(f"{where} should be a floating-point tensor, found {_kind(matrix)}")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise LensFileError(
                f"{where} should be a square [d_model, d_model] matrix, found shape "
                f"{tuple(matrix.shape)}"
            )
        if not bool(torch.isfinite(matrix).all()):
            raise LensFileError(f"{where} holds NaN or infinite entries")
        if index in jacobians:
            raise LensFileError(f"{where}: layer {index} appears twice")
        jacobians[index] = matrix.float() / divide
    metadata = payload.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise LensFileError(
            f"{path}: key 'metadata' should be a dict (model_name, corpus, ...), found "
            f"{_kind(metadata)}"
        )
    if "target_layer" in payload:
        metadata = {**metadata, "target_layer": payload["target_layer"]}
    target = metadata.get("target_layer")
    if target is not None and not _is_int(target):
        raise LensFileError(
            f"{path}: target_layer should be an integer (the last block's index), found "
            f"{_kind(target)}"
        )
    d_model = payload.get("d_model")
    first = next(iter(jacobians.values()))
    if d_model is not None and not _is_int(d_model):
        raise LensFileError(f"{path}: key 'd_model' should be an integer, found {_kind(d_model)}")
    if d_model is not None and int(d_model) != first.shape[0]:
        raise LensFileError(f"{path}: d_model is {d_model}, but J is {tuple(first.shape)}")
    return jacobians, n_prompts, dict(metadata)


def _is_int(value: Any) -> bool:
    """A Python or 0-d tensor integer (not a bool): what `int()` may take from a file."""
    if isinstance(value, Tensor):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, int) and not isinstance(value, bool)


def _count(payload: dict[str, Any], key: str, path: Path) -> int:
    value = payload.get(key, 0)
    if not _is_int(value) or int(value) < 0:
        raise LensFileError(
            f"{path}: key {key!r} should be a number of prompts (an integer ≥ 0), found "
            f"{_kind(value)}"
        )
    return int(value)


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{type(value).__name__} {shown}"


FIT_RECORD_KEY = "hooklens_fit"
"""Our entry in a J-lens fit checkpoint, beside the reference's keys: what a resume must
repeat. TransformerLens's and our `JacobianLens.load` read a checkpoint without it."""
FIT_CHECKSUM_KEY = "hooklens_fit_sha256"
"""`content_sha256` of every other entry of our fit checkpoint: the sums, the count, the
position and the settings, checked on resume and on `JacobianLens.load`."""
START_OVER = (
    "Delete it to start the fit over (hooklens fit-jlens: pass --overwrite instead of --resume)"
)
"""The advice of a refusal to resume a fit checkpoint."""


def verify_fit_checkpoint(
    state: dict[str, Any], path: Path, *, error: type[HooklensError] = RunStateError
) -> dict[str, Any] | None:
    """Check a fit checkpoint's checksum (`FIT_CHECKSUM_KEY`); return our record
    (`FIT_RECORD_KEY`), or `None` for a reference checkpoint (neither key).

    A checkpoint of hooklens before the checksum (the record without it) is accepted
    with a warning: the zip archive's CRC-32 (`load_weights_only`) still covers its
    bytes, and a resume checks its count against the prompts it went through.

    Raises:
        `error` (`RunStateError` for a resume, `LensFileError` for a load): the
            checksum does not match (the sums, count or settings were changed or
            damaged after saving), or the checksum is there without the record.
    """
    if FIT_CHECKSUM_KEY in state:
        if FIT_RECORD_KEY not in state or not seal_matches(state, FIT_CHECKSUM_KEY):
            raise error(
                f"{path} does not match the checksum it records ({FIT_CHECKSUM_KEY}): its "
                "running sums, prompt count or settings were changed or damaged after it "
                "was saved, so it would resume or load to another lens. "
                f"{START_OVER}"
            )
    elif FIT_RECORD_KEY in state:
        warn(
            f"{path} was written by a hooklens without checkpoint checksums: its sums "
            "cannot be verified beyond the file's CRC-32. If in doubt, delete it and fit "
            "again (hooklens fit-jlens: --overwrite)",
        )
    record = state.get(FIT_RECORD_KEY)
    if record is not None and not isinstance(record, dict):
        raise error(
            f"{path}: entry {FIT_RECORD_KEY!r} should be a dict (the model and settings of the "
            f"fit), found {type(record).__name__}. {START_OVER}"
        )
    return record
