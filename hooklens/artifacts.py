"""Lens files on disk: our format, the tuned-lens package's format, and the model check.

Our format is a directory with `config.json` and `params.safetensors`. The tuned-lens
package writes `config.json` and `params.pt` (a pickled state dict of the translators),
which we read with `torch.load(weights_only=True)`, never as an arbitrary pickle.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from hooklens.errors import LensMismatchError
from hooklens.files import atomic_write, atomic_write_text
from hooklens.model import ModelAdapter, ModelFingerprint, fingerprint_differences

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
TUNED_LENS_PARAMS_FILE = "params.pt"


@dataclass
class LensFiles:
    """What a lens directory holds."""

    config: dict[str, Any]
    tensors: dict[str, Tensor]
    format: str  # "hooklens" or "tuned-lens"


def write_lens_dir(path: str | os.PathLike, config: dict[str, Any], tensors: dict[str, Tensor]):
    """Write `params.safetensors` then `config.json` into `path`, each atomically."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(directory / PARAMS_FILE, lambda tmp: save_file(contiguous, tmp))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def read_lens_dir(path: str | os.PathLike) -> LensFiles:
    """Read a lens directory in our format or the tuned-lens package's."""
    directory = Path(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"no lens at {directory}: expected {CONFIG_FILE} with {PARAMS_FILE} "
            f"(hooklens) or {TUNED_LENS_PARAMS_FILE} (tuned-lens)"
        )
    for name in (PARAMS_FILE, TUNED_LENS_PARAMS_FILE):
        if (directory / name).is_file():
            return read_lens_files(config_path, directory / name)
    raise FileNotFoundError(
        f"{directory} has {CONFIG_FILE} but neither {PARAMS_FILE} nor {TUNED_LENS_PARAMS_FILE}"
    )


def read_lens_files(config_path: str | os.PathLike, params_path: str | os.PathLike) -> LensFiles:
    """Read a config and a parameter file: safetensors (ours) or a torch state dict
    (tuned-lens's `params.pt`, read with `weights_only=True`)."""
    config = json.loads(Path(config_path).read_text())
    if str(params_path).endswith(".safetensors"):
        return LensFiles(config, load_file(params_path), "hooklens")
    state = torch.load(params_path, weights_only=True, map_location="cpu")
    return LensFiles(config, _translator_keys(state), "tuned-lens")


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
    """Refuse (or, with `strict=False`, warn about) a lens made for a different model."""
    actual = adapter.fingerprint
    differences = fingerprint_differences(saved, actual)
    if not differences:
        return
    if saved.processing != actual.processing:
        advice = _processing_advice(saved, actual)
    elif any(d.startswith(("model", "d_", "n_layers")) for d in differences):
        advice = f"Load {saved.model_name!r}, or train a lens for this model with `hooklens train`."
    else:
        advice = (
            "The final norm or unembedding differs from the one the lens was trained with "
            "(another checkpoint or fine-tune, or a float16 load). Pass strict=False to "
            "load it anyway."
        )
    message = "this lens does not fit the model:\n  - " + "\n  - ".join(differences) + "\n" + advice
    if strict:
        raise LensMismatchError(message)
    warnings.warn(message, stacklevel=3)
