"""Lens files and where they live: formats on disk, safe writes, and the hub.

Below the lenses and above the model (`hooklens.core`): nothing here imports a lens, a
trajectory or training. The modules, one job each:

- atomic: atomic file writes (`atomic_write`, `StagedWrites`): a reader, or a run
  killed mid-write, never sees half a file; a full or read-only disk is one line.
- locks: `output_lock`, one run owning its outputs while it runs.
- lens_dir: our lens directories (`params.safetensors` + `config.json`, which records
  the parameters' and its own SHA-256) and tuned-lens's, the JSON field check, and
  `check_fingerprint`, the model check of a saved lens.
- reference_pt: `.pt` files read with `weights_only=True` and their zip CRC-32s
  checked (tuned-lens `params.pt`, J-lens artifacts, fit checkpoints), and the
  content checksums (`sealed`, `seal_matches`) our own `.pt` files carry.
- jlens_pt: J-lens `.pt` payloads, the reference's keys and ours: `parse_reference`,
  `verified_record`, and `verify_fit_checkpoint` for fit checkpoints.
- _hf: internal huggingface_hub plumbing (the offline test, downloads, the cache,
  error wording); the only module that talks to the network, and it imports
  huggingface_hub only inside its functions.
- hub: the tuned-lens catalogue (`load_artifacts`, `available_lens_artifacts`,
  `lens_repository`).
- jlens_registry: TransformerLens's registry of published Jacobian lenses
  (`jacobian_lens_registry`, `resolve_jacobian_lens`).

Every exception and warning these raise is defined in `hooklens.errors`
(`LensNotFoundError`, `HubUnreachableError`, `StaleLockWarning` are re-exported here).
"""

from hooklens.artifacts._hf import hub_reachable
from hooklens.artifacts.atomic import (
    FULL_BELOW_BYTES,
    STALE_AFTER_S,
    StagedWrites,
    atomic_write,
    atomic_write_text,
    process_exists,
    remove_stale_temporaries,
    temporary_pattern,
    write_error,
    write_failure,
)
from hooklens.artifacts.hub import (
    DEFAULT_REPO_ID,
    DEFAULT_REPO_TYPE,
    LENS_SUBFOLDER,
    available_lens_artifacts,
    lens_repository,
    load_artifacts,
)
from hooklens.artifacts.jlens_pt import (
    FIT_CHECKSUM_KEY,
    FIT_RECORD_KEY,
    START_OVER,
    JLensRecord,
    parse_reference,
    recorded_component,
    verified_record,
    verify_fit_checkpoint,
)
from hooklens.artifacts.jlens_registry import (
    JACOBIAN_LENS_REGISTRY_FILE,
    JACOBIAN_LENS_REGISTRY_PACKAGE,
    HubFile,
    JacobianLensEntry,
    download_hub_file,
    jacobian_lens_file,
    jacobian_lens_names,
    jacobian_lens_registry,
    resolve_jacobian_lens,
)
from hooklens.artifacts.lens_dir import (
    CONFIG_FILE,
    CONFIG_HASH_KEY,
    FIX_CONFIG,
    PARAMS_FILE,
    PARAMS_HASH_KEY,
    SIZES,
    TUNED_LENS_PARAMS_FILE,
    LensFiles,
    MapLocation,
    check_fingerprint,
    check_json_fields,
    config_digest,
    lens_dir_files,
    parameter_device,
    read_lens_dir,
    read_lens_files,
    sha256_file,
    write_lens_dir,
)
from hooklens.artifacts.locks import LOCK_ADVICE, OutputLock, lock_file, output_lock, read_lock
from hooklens.artifacts.reference_pt import (
    PAYLOAD_HASH_FORMAT,
    SAVE_AGAIN,
    SHA256_HEX,
    ZIP_MAGIC,
    content_sha256,
    load_weights_only,
    read_tuned_lens_params,
    seal_matches,
    sealed,
)
from hooklens.errors import HubUnreachableError, LensNotFoundError, StaleLockWarning

__all__ = [
    "CONFIG_FILE",
    "CONFIG_HASH_KEY",
    "DEFAULT_REPO_ID",
    "DEFAULT_REPO_TYPE",
    "FIT_CHECKSUM_KEY",
    "FIT_RECORD_KEY",
    "FIX_CONFIG",
    "FULL_BELOW_BYTES",
    "JACOBIAN_LENS_REGISTRY_FILE",
    "JACOBIAN_LENS_REGISTRY_PACKAGE",
    "LENS_SUBFOLDER",
    "LOCK_ADVICE",
    "PARAMS_FILE",
    "PARAMS_HASH_KEY",
    "PAYLOAD_HASH_FORMAT",
    "SAVE_AGAIN",
    "SHA256_HEX",
    "SIZES",
    "STALE_AFTER_S",
    "START_OVER",
    "TUNED_LENS_PARAMS_FILE",
    "ZIP_MAGIC",
    "HubFile",
    "HubUnreachableError",
    "JLensRecord",
    "JacobianLensEntry",
    "LensFiles",
    "LensNotFoundError",
    "MapLocation",
    "OutputLock",
    "StagedWrites",
    "StaleLockWarning",
    "atomic_write",
    "atomic_write_text",
    "available_lens_artifacts",
    "check_fingerprint",
    "check_json_fields",
    "config_digest",
    "content_sha256",
    "download_hub_file",
    "hub_reachable",
    "jacobian_lens_file",
    "jacobian_lens_names",
    "jacobian_lens_registry",
    "lens_dir_files",
    "lens_repository",
    "load_artifacts",
    "load_weights_only",
    "lock_file",
    "output_lock",
    "parameter_device",
    "parse_reference",
    "process_exists",
    "read_lens_dir",
    "read_lens_files",
    "read_lock",
    "read_tuned_lens_params",
    "recorded_component",
    "remove_stale_temporaries",
    "resolve_jacobian_lens",
    "seal_matches",
    "sealed",
    "sha256_file",
    "temporary_pattern",
    "verified_record",
    "verify_fit_checkpoint",
    "write_error",
    "write_failure",
    "write_lens_dir",
]
