"""Internal. A Jacobian lens's files: the `.pt` payload `JacobianLens.save` writes, and
what `JacobianLens.load` reads from a `.pt` file or a directory and checks against the
model before the lens is built.

The `.pt` format (the reference's keys, our record and checksum) is
`hooklens.artifacts.jlens_pt`; the directory format (`config.json` and
`params.safetensors`) is `hooklens.artifacts.lens_dir`. This module knows no lens class:
its readers return a `JacobianFile`, from which `JacobianLens.load` builds the lens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hooklens.artifacts import (
    FIX_CONFIG,
    check_fingerprint,
    check_json_fields,
    load_weights_only,
    read_lens_dir,
    sealed,
)
from hooklens.artifacts.jlens_pt import (
    CHECKSUM_KEY,
    FIT_RECORD_KEY,
    RECORD_FORMAT,
    RECORD_KEY,
    JLensRecord,
    parse_reference,
    recorded_component,
    verified_record,
)
from hooklens.artifacts.provenance import PROVENANCE_KEY, read_provenance
from hooklens.core import ModelAdapter, ModelFingerprint
from hooklens.errors import (
    InputError,
    InputTypeError,
    LensFileError,
    LensMismatchError,
    ProcessedWeightsError,
)

LENS_TYPE = "jacobian_lens"
"""The `lens_type` of a J-lens directory's `config.json`."""
SAVE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""What `save` stores a `.pt` lens's matrices as (the reference's default: float16)."""
NEEDS_RAW = (
    "Jacobian lenses are fitted on raw activations: load the model as a TransformerBridge "
    "without enable_compatibility_mode(), with "
    "HookedTransformer.from_pretrained_no_processing(name), or with "
    "hooklens.models.load(name, processing=False)."
)
"""The advice of a refusal of a model whose weights TransformerLens processed."""


@dataclass
class JacobianFile:
    """What a J-lens file holds, checked against the model it is loaded for."""

    jacobians: dict[int, Tensor]
    n_prompts: int
    metadata: dict[str, Any]
    component: str  # the component the file records ("resid_pre" when it records none)
    name_checked: bool  # a recorded fingerprint has already judged the model's name
    provenance: dict[str, Any] | None = None  # what wrote the file (None: not recorded)


def reference_payload(
    jacobians: dict[int, Tensor],
    *,
    dtype: torch.dtype,
    d_model: int,
    n_prompts: int,
    metadata: dict[str, Any],
    n_layers: int,
    component: str,
    fingerprint: ModelFingerprint,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """The `.pt` payload of a lens: the reference's keys, our record (its `provenance`
    included) and its checksum."""
    payload = {
        "J": {layer: matrix.to(device="cpu", dtype=dtype) for layer, matrix in jacobians.items()},
        "n_prompts": n_prompts,
        "source_layers": list(jacobians),
        "d_model": d_model,
        "metadata": metadata,
        RECORD_KEY: {
            "format": RECORD_FORMAT,
            "n_layers": n_layers,
            "target_layer": n_layers - 1,
            "component": component,
            "fingerprint": fingerprint.to_dict(),
            PROVENANCE_KEY: provenance,
        },
    }
    return sealed(payload, CHECKSUM_KEY)


def read_jacobian_pt(path: Path, adapter: ModelAdapter, *, strict: bool) -> JacobianFile:
    """A reference / TransformerLens `.pt` artifact or fit checkpoint, checked (our record
    and checksum where the file has them) against `adapter`'s model."""
    payload = load_weights_only(path, "a Jacobian lens (.pt artifact or fit checkpoint)")
    record = verified_record(payload, path)
    if record is not None:
        _check_layer_count(path, record.n_layers, record.fingerprint.model_name, adapter)
        require_raw_weights(adapter, source=str(path))
        _check_fingerprint_of(path, record.fingerprint, adapter, strict=strict)
    jacobians, n_prompts, metadata = parse_reference(payload, path)
    if record is not None:
        _check_record_against_matrices(record, jacobians, path)
    return JacobianFile(
        jacobians,
        n_prompts,
        metadata,
        component=record.component if record is not None else "resid_pre",
        name_checked=record is not None,
        provenance=_recorded_provenance(payload, path),
    )


def _recorded_provenance(payload: Any, path: Path) -> dict[str, Any] | None:
    """The provenance a `.pt` lens (our record) or fit checkpoint (our fit record)
    holds; `None` for a file without one."""
    if not isinstance(payload, dict):
        return None
    for key in (RECORD_KEY, FIT_RECORD_KEY):
        entry = payload.get(key)
        if isinstance(entry, dict) and PROVENANCE_KEY in entry:
            return read_provenance(entry[PROVENANCE_KEY], f"{path} (entry {key!r})")
    return None


def read_jacobian_dir(path: Path, adapter: ModelAdapter, *, strict: bool) -> JacobianFile:
    """A directory saved by `JacobianLens.save`, checked against `adapter`'s model."""
    files = read_lens_dir(path)
    config, source = files.config, str(files.config_path)
    if config.get("lens_type") != LENS_TYPE:
        raise LensFileError(
            f"{files.config_path}: lens_type is {config.get('lens_type')!r}, not "
            f"{LENS_TYPE!r}; load a tuned lens with TunedLens.load"
        )
    check_json_fields(_DirectoryConfig, config, source)
    check_json_fields(ModelFingerprint, config["fingerprint"], source, "fingerprint.")
    fingerprint = ModelFingerprint.from_dict(config["fingerprint"])
    for key, size, recorded in (
        ("d_model", config["d_model"], fingerprint.d_model),
        ("num_hidden_layers", config["num_hidden_layers"], fingerprint.n_layers),
    ):
        if size != recorded:
            raise LensFileError(
                f"{source}: key {key!r} is {size}, but the fingerprint records "
                f"{recorded}; the file contradicts itself. {FIX_CONFIG}"
            )
    n_prompts = config.get("n_prompts", 0)
    if n_prompts < 0:
        raise LensFileError(
            f"{source}: key 'n_prompts' should be 0 or more, found {n_prompts}. {FIX_CONFIG}"
        )
    saved_component = recorded_component(config.get("component", "resid_pre"), source)
    _check_layer_count(path, fingerprint.n_layers, fingerprint.model_name, adapter)
    _check_fingerprint_of(path, fingerprint, adapter, strict=strict)
    jacobians = {}
    for key, value in files.tensors.items():
        layer = key.removeprefix("J.")
        if not key.startswith("J.") or not layer.isdigit():
            raise LensFileError(
                f"{files.params_path}: unexpected tensor {key!r}; a Jacobian lens holds "
                f"'J.0', 'J.1', ... {FIX_CONFIG}"
            )
        jacobians[int(layer)] = value
    listed = config.get("source_layers")
    if listed is not None and sorted(listed) != sorted(jacobians):
        raise LensFileError(
            f"{source}: key 'source_layers' lists {listed}, but {files.params_path.name} "
            f"holds matrices for {sorted(jacobians)}. {FIX_CONFIG}"
        )
    return JacobianFile(
        jacobians,
        n_prompts,
        config.get("metadata") or {},
        component=saved_component,
        name_checked=True,
        provenance=files.provenance,
    )


@dataclass
class _DirectoryConfig:
    """The keys of a J-lens directory's `config.json` (what `check_json_fields` checks)."""

    lens_type: str
    d_model: int
    num_hidden_layers: int
    fingerprint: dict[str, Any]
    n_prompts: int = 0
    source_layers: list[int] | None = None
    metadata: dict[str, Any] | None = None
    component: str = "resid_pre"


def check_save_dtype(dtype: Any) -> None:
    if not isinstance(dtype, torch.dtype):
        raise InputTypeError(
            f"dtype should be a torch dtype (torch.float16, torch.bfloat16, torch.float32 "
            f"or torch.float64), got {type(dtype).__name__} {dtype!r}"
        )
    if dtype not in SAVE_DTYPES:
        raise InputError(
            f"dtype={dtype} cannot hold a Jacobian lens: its matrices are stored as "
            "torch.float16 (the default, as the reference does), torch.bfloat16, "
            "torch.float32 or torch.float64"
        )


def _check_record_against_matrices(
    record: JLensRecord, jacobians: dict[int, Tensor], path: Path
) -> None:
    widths = {matrix.shape[0] for matrix in jacobians.values()}
    if widths != {record.fingerprint.d_model}:
        raise LensFileError(
            f"{path}: the matrices are {sorted(widths)} wide, but the model it records "
            f"has d_model={record.fingerprint.d_model}. Save or fit the lens again."
        )


def _check_layer_count(path: Path, n_layers: int, fitted_for: str, adapter: ModelAdapter) -> None:
    """Refuse a lens fitted on a model of another depth: its matrices carry residuals
    into the output of *that* model's last block, not this one's final residual."""
    if n_layers == adapter.n_layers:
        return
    raise LensMismatchError(
        f"{path} was fitted on a model of {n_layers} layers ({fitted_for!r}; its "
        f"matrices read into the output of block {n_layers - 1}), but "
        f"{adapter.model_name!r} has {adapter.n_layers} layers: its matrices do not map "
        "into this model's final residual. Load the model it was fitted on, or fit a lens "
        "for this one (JacobianLens.fit or `hooklens fit-jlens`)."
    )


def _check_fingerprint_of(
    path: Path, saved: ModelFingerprint, adapter: ModelAdapter, *, strict: bool
) -> None:
    """`check_fingerprint`, its refusal naming the file."""
    try:
        check_fingerprint(saved, adapter, strict=strict)
    except LensMismatchError as error:
        # check_fingerprint's advice is a tuned lens's; a J-lens is fitted, not trained.
        message = str(error).replace(
            "train a lens for this model with `hooklens train`",
            "fit a Jacobian lens for this model (JacobianLens.fit or `hooklens fit-jlens`)",
        )
        raise LensMismatchError(f"{path} (fitted for {saved.model_name!r}): {message}") from None


def require_raw_weights(adapter: ModelAdapter, *, source: str) -> None:
    """Refuse a model whose weights TransformerLens processed: J-lenses live in the raw
    residual basis."""
    processing = adapter.processing
    if processing.fold_ln or processing.center_writing_weights or processing.center_unembed:
        raise ProcessedWeightsError(
            f"{source}: this model's weights were processed by TransformerLens "
            f"({processing}), which changes the residual basis the lens was fitted in. " + NEEDS_RAW
        )
