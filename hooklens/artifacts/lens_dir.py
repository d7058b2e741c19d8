"""Lens directories: our format, the tuned-lens package's format, and the model check.

Our format is a directory with `config.json` and `params.safetensors`. The tuned-lens
package writes `config.json` and `params.pt` (a pickled state dict of the translators),
which we read with `torch.load(weights_only=True)` (`reference_pt`), never as an
arbitrary pickle.

`config.json` is the commit record of a lens directory: it records the SHA-256 of the
parameter file (`params_sha256`) and is renamed into place after it. A save killed
between the two renames, or a parameter file changed by a single byte later, no longer
matches its config and is refused (`LensFileError`) instead of loading one lens's
parameters under another's config. The config also records the SHA-256 of its own content
(`config_sha256`, over the canonical JSON of every other key), so a damaged or hand-edited
config (another model name in the fingerprint, another component) is refused as damaged
instead of read as a lens for something else. Directories without the hashes (hooklens
before them, and tuned-lens artifacts) load as before. The config's `provenance` (the
versions and settings that wrote it, `hooklens.artifacts.provenance`) is read into
`LensFiles.provenance`; configs without one load as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from hooklens._checks import available_device
from hooklens.artifacts.atomic import StagedWrites
from hooklens.artifacts.provenance import PROVENANCE_KEY, read_provenance
from hooklens.artifacts.reference_pt import SAVE_AGAIN, SHA256_HEX, read_tuned_lens_params
from hooklens.core import ModelAdapter, ModelFingerprint, fingerprint_differences
from hooklens.errors import (
    InputTypeError,
    LensFileError,
    LensMismatchError,
    LensNotFoundError,
    OutputExistsError,
    warn,
)

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
TUNED_LENS_PARAMS_FILE = "params.pt"
PARAMS_HASH_KEY = "params_sha256"
"""The key of `config.json` that records the SHA-256 of the parameter file's bytes."""
CONFIG_HASH_KEY = "config_sha256"
"""The key of `config.json` that records the SHA-256 of the config itself (`config_digest`)."""

SIZES = ("d_model", "n_layers", "d_vocab")
"""Fingerprint entries a lens must share with its model whatever `strict` says."""

FIX_CONFIG = "The file is damaged or was edited by hand: fix it, or save the lens again."


MapLocation = str | torch.device | None
"""Where parameters are read to: a device name (`"cpu"`, `"cuda:0"`) or `torch.device`."""


def parameter_device(map_location: MapLocation) -> torch.device | None:
    """The device `map_location` names, checked to exist here (None stays None).

    Raises:
        InputTypeError: not a string or `torch.device` (torch.load's dicts and
            functions are not taken: safetensors files read onto one device).
        InputError: no such device, or not on this machine.
    """
    if map_location is None:
        return None
    if not isinstance(map_location, (str, torch.device)):
        raise InputTypeError(
            f"map_location should be a device name ('cpu', 'cuda:0') or a torch.device, "
            f"found {type(map_location).__name__}; a lens's parameters are read onto one device"
        )
    return available_device(map_location, f"map_location={map_location!r}")


@dataclass
class LensFiles:
    """What a lens directory holds (the config without `params_sha256`)."""

    config: dict[str, Any]
    tensors: dict[str, Tensor]
    format: str  # "hooklens" or "tuned-lens"
    config_path: Path
    params_path: Path
    provenance: dict[str, Any] | None = None  # what wrote the files (None: not recorded)


def write_lens_dir(
    path: str | os.PathLike,
    config: dict[str, Any],
    tensors: dict[str, Tensor],
    *,
    also: Mapping[str | os.PathLike, str] | None = None,
) -> Path:
    """Write `params.safetensors` and `config.json` (recording the parameters' SHA-256)
    into directory `path`, replacing a lens already there.

    Both files are written and flushed to temporaries before either is renamed into
    place, parameters first: a save that fails leaves the previous lens intact, and one
    killed between the two renames leaves a directory that `read_lens_dir` refuses.
    `also` (`{path: text}`: a training run's history, say) are staged with them and
    renamed into place last, so each of them is there only with the lens it goes with.
    """
    directory = _directory_to_write(Path(path))
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    config_path = directory / CONFIG_FILE
    with StagedWrites() as staged:
        params_tmp = staged.stage(directory / PARAMS_FILE, lambda tmp: save_file(contiguous, tmp))
        record = {**config, PARAMS_HASH_KEY: sha256_file(params_tmp)}
        record[CONFIG_HASH_KEY] = config_digest(record)
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        staged.stage(config_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        if not _records_params_hash(config_path):
            # An old config cannot vouch for its parameters: without it, a kill between
            # the renames leaves parameters without config (refused), not a silent mix.
            config_path.unlink(missing_ok=True)
        for target, content in (also or {}).items():
            staged.stage(target, _text_writer(content))
    return directory


def _text_writer(text: str) -> Callable[[str], object]:
    return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")


def read_lens_dir(path: str | os.PathLike, *, map_location: MapLocation = None) -> LensFiles:
    """Read a lens directory in our format or the tuned-lens package's; the tensors are
    read onto `map_location` (default the CPU).

    Raises:
        LensNotFoundError: `path` does not exist, is a file, or holds no lens.
        LensFileError: a file is truncated, corrupt, or does not match the other.
    """
    return read_lens_files(*lens_dir_files(path), map_location=map_location)


def lens_dir_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """`(config.json, parameter file)` of a lens directory, without reading them: a
    quick check (before a model loads) that `path` holds a lens at all.

    Raises:
        LensNotFoundError: `path` does not exist, is a file, or holds no lens.
        LensFileError: the parameters are there but the config is not.
    """
    directory = Path(path)
    expected = (
        f"a lens is a directory holding {CONFIG_FILE} with {PARAMS_FILE} (hooklens) or "
        f"{TUNED_LENS_PARAMS_FILE} (tuned-lens)"
    )
    if not directory.exists():
        raise LensNotFoundError(
            f"no lens at {directory}: the path does not exist ({expected}). Save one with "
            "TunedLens.save(path) or train one with `hooklens train`."
        )
    if not directory.is_dir():
        hint = f": pass {directory.parent}" if directory.name in _LENS_FILE_NAMES else ""
        raise LensNotFoundError(f"no lens at {directory}: it is a file, and {expected}{hint}")
    config_path = directory / CONFIG_FILE
    params = [directory / n for n in (PARAMS_FILE, TUNED_LENS_PARAMS_FILE)]
    params_path = next((p for p in params if p.is_file()), None)
    if not config_path.is_file():
        if params_path is not None:
            raise LensFileError(
                f"{directory} has {params_path.name} but no {CONFIG_FILE}: a save was "
                f"interrupted, or {CONFIG_FILE} was deleted. {SAVE_AGAIN}"
            )
        raise LensNotFoundError(f"no lens at {directory}: no {CONFIG_FILE} there ({expected})")
    if params_path is None:
        raise LensNotFoundError(
            f"{directory} has {CONFIG_FILE} but neither {PARAMS_FILE} nor "
            f"{TUNED_LENS_PARAMS_FILE} ({expected})"
        )
    return config_path, params_path


def read_lens_files(
    config_path: str | os.PathLike,
    params_path: str | os.PathLike,
    *,
    map_location: MapLocation = None,
) -> LensFiles:
    """Read a config and a parameter file: safetensors (ours, read with `device=`) or a
    torch state dict (tuned-lens's `params.pt`, read with `weights_only=True` and
    `map_location=`), the tensors onto `map_location` (default the CPU).

    A config recording `params_sha256` must match the parameter file's bytes.

    Raises:
        LensFileError: either file is unreadable, truncated or corrupt, or they do not
            match; the message names the file and says what to do.
        InputError, InputTypeError: `map_location` is no device of this machine.
    """
    config_path, params_path = Path(config_path), Path(params_path)
    device = parameter_device(map_location) or torch.device("cpu")
    config = _read_config(config_path)
    _check_config_digest(config, config_path)
    provenance = read_provenance(config.pop(PROVENANCE_KEY, None), str(config_path))
    recorded = config.pop(PARAMS_HASH_KEY, None)
    if recorded is not None and not (isinstance(recorded, str) and SHA256_HEX.fullmatch(recorded)):
        raise LensFileError(
            f"{config_path}: key {PARAMS_HASH_KEY!r} should be 64 hexadecimal digits (the "
            f"SHA-256 of {params_path.name}), found {recorded!r}. {SAVE_AGAIN}"
        )
    if params_path.name.endswith(".safetensors"):
        tensors, format = _read_safetensors(params_path, device), "hooklens"
    else:
        tensors, format = read_tuned_lens_params(params_path, device), "tuned-lens"
    if recorded is not None:
        actual = sha256_file(params_path)
        if actual != recorded.lower():
            raise LensFileError(
                f"{params_path} does not match {config_path}: the config records SHA-256 "
                f"{recorded[:12]}… for the parameters, the file has {actual[:12]}…. A save "
                "was interrupted between writing the two files (the parameters of one lens "
                "under the config of another), or the parameter file was changed or "
                f"damaged after saving. {SAVE_AGAIN}"
            )
    return LensFiles(config, tensors, format, config_path, params_path, provenance)


def check_json_fields(schema: type, values: Any, source: str, prefix: str = "") -> None:
    """Refuse a JSON object that lacks a required field of dataclass `schema`, or holds
    a field of another type than its annotation (str, int, bool, dict, `| None`).

    Raises:
        LensFileError: naming `source` (the file) and the key (`prefix` + field name).
    """
    if not isinstance(values, dict):
        raise LensFileError(
            f"{source}: {prefix.rstrip('.') or 'the config'} should be an object, found "
            f"{_json_kind(values)}. {FIX_CONFIG}"
        )
    required = [
        f.name for f in fields(schema) if f.default is MISSING and f.default_factory is MISSING
    ]
    if missing := [prefix + name for name in required if name not in values]:
        raise LensFileError(
            f"{source}: missing key {', '.join(map(repr, missing))}; expected "
            f"{', '.join(prefix + n for n in required)}. {FIX_CONFIG}"
        )
    hints = get_type_hints(schema)
    for name, value in values.items():
        if name in hints and not _has_type(value, hints[name]):
            raise LensFileError(
                f"{source}: key {prefix + name!r} should be {_describe(hints[name])}, found "
                f"{json.dumps(value)[:40]} ({_json_kind(value)}). {FIX_CONFIG}"
            )


def config_digest(config: dict[str, Any]) -> str:
    """The SHA-256 of a config's canonical JSON (sorted keys, no spaces, ASCII), without
    its `config_sha256` entry: what that entry records."""
    content = {k: v for k, v in config.items() if k != CONFIG_HASH_KEY}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _check_config_digest(config: dict[str, Any], config_path: Path) -> None:
    """Refuse a config whose content does not match the `config_sha256` it records (and
    drop that entry). A config without one (older hooklens, tuned-lens) passes: a flip
    in that key's own name leaves the rest as it was saved."""
    recorded = config.pop(CONFIG_HASH_KEY, None)
    if recorded is None:
        return
    if not (isinstance(recorded, str) and SHA256_HEX.fullmatch(recorded)):
        raise LensFileError(
            f"{config_path}: key {CONFIG_HASH_KEY!r} should be 64 hexadecimal digits (the "
            f"SHA-256 of the rest of the config), found {json.dumps(recorded)[:70]}. "
            f"{FIX_CONFIG}"
        )
    actual = config_digest(config)
    if actual != recorded.lower():
        raise LensFileError(
            f"{config_path} was changed after it was saved: it records SHA-256 "
            f"{recorded[:12]}… of its content, the content has {actual[:12]}…. The file "
            f"was damaged (a copy, a disk) or edited by hand. {SAVE_AGAIN}"
        )


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hexadecimal digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_LENS_FILE_NAMES = (CONFIG_FILE, PARAMS_FILE, TUNED_LENS_PARAMS_FILE)


def _has_type(value: Any, hint: Any) -> bool:
    if get_origin(hint) in (Union, types.UnionType):
        return any(_has_type(value, arg) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):  # JSON true is no layer count
        return isinstance(value, hint) and not isinstance(value, bool)
    return isinstance(value, get_origin(hint) or hint)


def _describe(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    names.update({dict: "an object", list: "an array", type(None): "null"})
    return names.get(get_origin(hint) or hint, str(hint))


def _json_kind(value: Any) -> str:
    kinds = [(bool, "a boolean"), (int, "an integer"), (float, "a number")]
    kinds += [(str, "a string"), (list, "an array"), (dict, "an object"), (type(None), "null")]
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


def _directory_to_write(directory: Path) -> Path:
    if directory.exists() and not directory.is_dir():
        raise OutputExistsError(
            f"cannot save a lens to {directory}: it is a file, and a lens is a directory "
            f"({CONFIG_FILE}, {PARAMS_FILE}). Pass the path of a directory (it is created "
            "if needed), or remove the file."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputExistsError(
            f"cannot save a lens to {directory}: a part of that path is a file, not a "
            "directory. Pass another path, or remove the file."
        ) from None
    return directory


def _records_params_hash(config_path: Path) -> bool:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get(PARAMS_HASH_KEY), str)


def _read_config(config_path: Path) -> dict[str, Any]:
    expected = (
        "expected a JSON object with the lens's settings (base_model_name_or_path, "
        "d_model, num_hidden_layers, ...)"
    )
    try:
        text = config_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise LensFileError(
            f"{config_path} is not UTF-8 text ({error.reason} at byte {error.start}); "
            f"{expected}. {SAVE_AGAIN}"
        ) from None
    if not text.strip():
        raise LensFileError(
            f"{config_path} is empty; {expected}. A save was interrupted or the file was "
            f"truncated. {SAVE_AGAIN}"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise LensFileError(
            f"{config_path} is not valid JSON: {error.msg} at line {error.lineno}, column "
            f"{error.colno}; {expected}. It may be truncated or badly edited: fix it, or "
            "save the lens again."
        ) from None
    if not isinstance(config, dict):
        raise LensFileError(f"{config_path} holds {_json_kind(config)}; {expected}. {SAVE_AGAIN}")
    return config


def _read_safetensors(params_path: Path, device: torch.device) -> dict[str, Tensor]:
    try:
        return load_file(params_path, device=str(device))
    except OSError:
        raise
    except Exception as error:  # safetensors raises SafetensorError and others
        size = params_path.stat().st_size
        found = "empty" if size == 0 else f"truncated or corrupt ({size} bytes)"
        raise LensFileError(
            f"{params_path} is {found}: safetensors cannot read it ({error}). A save was "
            f"interrupted, or the file was damaged in a copy. {SAVE_AGAIN}"
        ) from None


def _processing_advice(saved: ModelFingerprint, actual: ModelFingerprint) -> str:
    saved_processed = saved.fold_ln or saved.center_unembed or saved.center_writing_weights
    actual_processed = actual.fold_ln or actual.center_unembed or actual.center_writing_weights
    if saved_processed and not actual_processed:
        return (
            "The lens was trained on weights processed by TransformerLens. Load the model "
            "with processing: HookedTransformer.from_pretrained(name) (the default), "
            "bridge.enable_compatibility_mode(), or hooklens.models.load(name, processing=True)."
        )
    if actual_processed and not saved_processed:
        return (
            "The lens was trained on unprocessed weights. Load the model without processing: "
            "HookedTransformer.from_pretrained_no_processing(name), a TransformerBridge "
            "without enable_compatibility_mode(), or hooklens.models.load(name, "
            "processing=False)."
        )
    return (
        "Load the model with the same fold_ln / center_writing_weights / center_unembed "
        "flags the lens was trained with."
    )


def check_fingerprint(saved: ModelFingerprint, adapter: ModelAdapter, *, strict: bool) -> None:
    """Refuse a lens made for a different model; with `strict=False`, only warn about
    another model name, unembedding or weight processing.

    The sizes (`d_model`, `n_layers`, `d_vocab`) are refused whatever `strict` says: a
    lens for fewer layers has no final row that reproduces the model, and one for another
    width or vocabulary reads something else.
    """
    actual = adapter.fingerprint
    differences = fingerprint_differences(saved, actual)
    if not differences:
        return
    sizes = [d for d in differences if d.startswith(SIZES)]
    if sizes:
        advice = (
            f"Load {saved.model_name!r}, or train a lens for this model with `hooklens "
            "train`. (strict=False relaxes the model name, unembedding and weight "
            "processing checks, never the sizes.)"
        )
    elif saved.processing != actual.processing:
        advice = _processing_advice(saved, actual)
    elif any(d.startswith("model") for d in differences):
        advice = f"Load {saved.model_name!r}, or train a lens for this model with `hooklens train`."
    else:
        advice = (
            "The final norm or unembedding differs from the one the lens was trained with "
            "(another checkpoint or fine-tune, or a float16 load). Pass strict=False to "
            "load it anyway."
        )
    message = "this lens does not fit the model:\n  - " + "\n  - ".join(differences) + "\n" + advice
    if strict or sizes:
        raise LensMismatchError(message)
    warn(message)
