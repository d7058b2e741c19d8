"""`.pt` files read with `torch.load(weights_only=True)`, and the checksums our own carry.

Files of the reference implementations are pickles: tuned-lens's `params.pt` (a state dict
of translators), the reference's and TransformerLens's J-lens artifacts and fit
checkpoints. `load_weights_only` reads any of them without running code, after checking a
zip archive's CRC-32s (torch does not). Our own `.pt` files (J-lenses, fit and training
checkpoints) also record a SHA-256 over their content (`sealed`, `seal_matches`), so a
load-edit-save is caught too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hooklens.errors import HooklensError, LensFileError

SAVE_AGAIN = "Save the lens again (or download it again) to replace the directory."
"""The advice of a refusal to read a lens file: what replaces it."""
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
"""A SHA-256 as written in our files: 64 hexadecimal digits."""

ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of a `torch.save` file (a zip archive since torch 1.6)."""

_PASS_THROUGH = (FileNotFoundError, PermissionError, IsADirectoryError)
"""Errors of opening a file that say what they are (with its name) and reach the caller."""


def load_weights_only(
    path: str | os.PathLike,
    what: str,
    *,
    map_location: str | torch.device = "cpu",
    error: type[HooklensError] = LensFileError,
    advice: str = SAVE_AGAIN,
) -> Any:
    """`torch.load(path, weights_only=True, map_location=...)`, on the CPU by default: a
    pickle that would run code, a truncated, empty or damaged file, or anything else
    unreadable is an `error` (`LensFileError`, or `RunStateError` for a checkpoint)
    naming `path`, `what` it should have been, and `advice` (nothing in it is executed).

    A zip archive (what `torch.save` writes) is first checked member by member against
    the CRC-32 its directory records: torch does not check them, so a flipped bit in a
    tensor would otherwise load as other numbers. A file that cannot be opened
    (`FileNotFoundError`, `PermissionError`, `IsADirectoryError`) raises as it is.
    """
    path = Path(path)
    _check_zip_archive(path, what, error, advice)
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except _PASS_THROUGH:
        raise
    except Exception as caught:  # EOFError, UnpicklingError, RuntimeError, OSError, ...
        reason = str(caught).strip().splitlines()[0] if str(caught).strip() else "no data"
        if _size(path) == 0:
            reason = "the file is empty"
        raise error(
            f"{path} cannot be read as {what} (read with weights_only=True): "
            f"{type(caught).__name__}: {reason}. It may be truncated or damaged. {advice}"
        ) from None


def _check_zip_archive(path: Path, what: str, error: type[HooklensError], advice: str) -> None:
    """Refuse a zip archive whose members do not match their CRC-32 (or that zipfile
    cannot read: truncated, a damaged header); a file of another format is left to
    `torch.load`."""
    with open(path, "rb") as file:  # FileNotFoundError and friends: as they are
        if file.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every member, checks its CRC-32
    except _PASS_THROUGH:
        raise
    except Exception as caught:  # BadZipFile, EOFError, zlib.error, NotImplementedError, ...
        reason = str(caught).strip().splitlines()[0] if str(caught).strip() else "no data"
        raise error(
            f"{path} cannot be read as {what}: its zip archive is truncated or damaged "
            f"({type(caught).__name__}: {reason}; {_size(path)} bytes). {advice}"
        ) from None
    if damaged is not None:
        raise error(
            f"{path} is damaged: its member {damaged!r} does not match the CRC-32 checksum "
            f"the archive records, so {what} would load with other numbers. {advice}"
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


PAYLOAD_HASH_FORMAT = "hooklens-content-sha256-v1"
"""How `content_sha256` serialises a payload (recorded beside the digest it gives)."""


def content_sha256(value: Any) -> str:
    """The SHA-256 of a payload's content, the same before `torch.save` and after a
    `weights_only` load: dicts by their items in a fixed key order, lists and tuples
    item by item, tensors by dtype, shape and bytes (on the CPU, contiguous, whatever
    their device or strides), other values by their canonical JSON (type included).

    A renamed key, a changed count or one changed tensor entry changes the digest.
    """
    digest = hashlib.sha256(PAYLOAD_HASH_FORMAT.encode())
    _hash_into(digest, value)
    return digest.hexdigest()


def _hash_into(digest: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        header = json.dumps(["tensor", str(value.dtype), list(value.shape)])
        digest.update(f"{len(header)}:{header}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, Mapping):
        digest.update(f"dict:{len(value)}:".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _hash_into(digest, key)
            _hash_into(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}:{len(value)}:".encode())
        for item in value:
            _hash_into(digest, item)
    else:
        try:
            text = json.dumps([type(value).__name__, value])
        except (TypeError, ValueError):  # torch.Size, dtype, device, ...: their repr
            text = json.dumps([type(value).__name__, repr(value)])
        digest.update(f"{len(text)}:{text}".encode())


def sealed(payload: dict[str, Any], key: str) -> dict[str, Any]:
    """`payload` with `key` set to the `content_sha256` of every other entry."""
    unsealed = {k: v for k, v in payload.items() if k != key}
    return {**unsealed, key: content_sha256(unsealed)}


def seal_matches(payload: dict[str, Any], key: str) -> bool:
    """Whether `payload[key]` is the `content_sha256` of every other entry of `payload`."""
    recorded = payload.get(key)
    if not (isinstance(recorded, str) and SHA256_HEX.fullmatch(recorded)):
        return False
    return content_sha256({k: v for k, v in payload.items() if k != key}) == recorded.lower()


def read_tuned_lens_params(params_path: Path, device: torch.device) -> dict[str, Tensor]:
    """A tuned-lens `params.pt` (read with `weights_only=True` onto `device`), its
    tensors named `layer_translators.{i}.weight` whichever way they were saved.

    Raises:
        LensFileError: the file is unreadable, or holds anything but tensors under
            string keys.
    """
    return _translator_keys(_read_state_dict(params_path, device))


def _read_state_dict(params_path: Path, device: torch.device) -> dict[str, Tensor]:
    state = load_weights_only(
        params_path,
        "a tuned-lens parameter file (a torch state dict of tensors)",
        map_location=device,
    )
    if not isinstance(state, dict):
        raise LensFileError(
            f"{params_path} holds a {type(state).__name__}; expected a state dict of "
            f"tensors ({{'0.weight': tensor, ...}}). {SAVE_AGAIN}"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise LensFileError(
                f"{params_path}: entry {key!r} is a {type(value).__name__}; expected "
                f"tensors under string keys. {SAVE_AGAIN}"
            )
    return state


def _translator_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Name tuned-lens parameters `layer_translators.{i}.weight` whichever way they were saved.

    tuned-lens 0.2 saves `layer_translators.state_dict()` (`{i}.weight`); older
    versions saved the whole lens, whose `unembed.*` entries we drop.
    """
    renamed = {}
    for key, value in state.items():
        if key.startswith("unembed."):
            continue
        renamed[key if key.startswith("layer_translators.") else f"layer_translators.{key}"] = value
    return renamed
