"""What made a lens file: the library versions, the model and the fit settings.

Every file hooklens writes for a lens (tuned-lens directories, J-lens `.pt` files and
directories, fit and training checkpoints, the JSON of `hooklens eval`) records a
`provenance` entry, `current_provenance()` at the time of writing:

    {"hooklens": "0.1.0", "torch": "2.5.1", "transformers": "4.46.0",
     "transformer_lens": "3.9.0", "model_name": "gpt2", "model_revision": "...",
     "settings": {...}}

`model_revision` is there only where the model's Hugging Face config records one, and
`settings` only where the writer knew them (a training run's config, the fast fit's
`alpha` and token count, a J-lens fit's prompts and cut-offs).

A lens read back under another transformers or TransformerLens major.minor version than
the one recorded warns once per pair of versions (`check_provenance`,
`ProvenanceWarning`): a model's numerics (rotary scaling, attention kernels) can change
between those, and the lens was fitted on the old ones. Files without provenance (older
hooklens, tuned-lens, the reference's J-lenses) load silently.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import torch

from hooklens.core import ModelAdapter
from hooklens.errors import LensFileError, ProvenanceWarning, warn

PROVENANCE_KEY = "provenance"
"""The key under which a lens file records its provenance."""
PACKAGES = ("hooklens", "torch", "transformers", "transformer_lens")
"""The libraries whose versions a provenance records (distribution names)."""
CHECKED = ("transformers", "transformer_lens")
"""The libraries whose major.minor version a load compares with the recorded one."""
_DISTRIBUTIONS = {"transformer_lens": "transformer-lens"}

_warned: set[tuple[str, str, str]] = set()
"""The `(package, recorded, installed)` version pairs already warned about."""


def package_version(package: str) -> str | None:
    """The installed version of `package` (`None` when it is not installed); torch's
    with its build (`2.14.1+cu130`), which its package metadata may leave out."""
    if package == "torch":
        return str(torch.__version__)
    for name in (package, _DISTRIBUTIONS.get(package, package)):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def current_provenance(
    model: Any = None,
    *,
    settings: dict[str, Any] | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """The provenance of a file written now: the versions of `PACKAGES`, the model's
    name and Hugging Face revision (`revision`, else the one its config records, else
    none) where `model` (a TransformerLens model or `ModelAdapter`) is given, and the
    fit `settings` where given.

    >>> record = current_provenance(model, settings={"alpha": 1e-5})
    >>> sorted(record)
    ['hooklens', 'model_name', 'settings', 'torch', 'transformer_lens', 'transformers']
    >>> record["model_name"], record["settings"]
    ('tiny-llama', {'alpha': 1e-05})
    """
    record: dict[str, Any] = {name: package_version(name) for name in PACKAGES}
    if model is not None:
        adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        record["model_name"] = adapter.model_name
        revision = revision or model_revision(adapter.model)
    if revision:
        record["model_revision"] = str(revision)
    if settings:
        record["settings"] = dict(settings)
    return record


def model_revision(model: Any) -> str | None:
    """The Hugging Face revision a model's config records (a TransformerBridge's
    `original_model.config`, transformers' `_commit_hash`), or `None`."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    for source, key in ((config, "_commit_hash"), (config, "revision"), (model, "revision")):
        value = getattr(source, key, None) if source is not None else None
        if isinstance(value, str) and value:
            return value
    return None


def read_provenance(value: Any, source: str) -> dict[str, Any] | None:
    """The provenance a file records, checked to be an object (`None`: none recorded).

    Raises:
        LensFileError: the entry is there but is no object (naming `source` and the key).
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LensFileError(
            f"{source}: key {PROVENANCE_KEY!r} should be an object (the versions and "
            f"settings that wrote the file), found {type(value).__name__}. The file is "
            "damaged or was edited by hand: save the lens again."
        )
    return value


def describe_provenance(recorded: dict[str, Any] | None) -> str:
    """A short line for a `repr`: `"hooklens 0.1.0, torch 2.5.1"` (empty for none).

    >>> describe_provenance({"hooklens": "0.1.0", "torch": "2.5.1+cu121"})
    'hooklens 0.1.0, torch 2.5.1+cu121'
    """
    if not recorded:
        return ""
    shown = [f"{name} {recorded[name]}" for name in ("hooklens", "torch") if recorded.get(name)]
    return ", ".join(shown)


def provenance_lines(recorded: dict[str, Any] | None) -> str:
    """Every entry of a provenance on one line (what `hooklens eval` prints).

    >>> provenance_lines({"hooklens": "0.1.0", "model_name": "gpt2", "settings": {"a": 1}})
    'hooklens 0.1.0; model gpt2; settings a=1'
    """
    if not recorded:
        return "no provenance recorded (an older or foreign file)"
    parts = [f"{name} {recorded[name]}" for name in PACKAGES if recorded.get(name)]
    if recorded.get("model_name"):
        revision = recorded.get("model_revision")
        parts.append(f"model {recorded['model_name']}" + (f"@{revision}" if revision else ""))
    settings = recorded.get("settings")
    if isinstance(settings, dict) and settings:
        parts.append("settings " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    return "; ".join(parts)


def check_provenance(recorded: dict[str, Any] | None, what: str) -> None:
    """Warn (`ProvenanceWarning`, once per pair of versions) when `recorded` names
    another transformers or TransformerLens major.minor version than the installed one;
    `what` names the file. Nothing is said for a file without provenance."""
    if not recorded:
        return
    for package in CHECKED:
        then, now = recorded.get(package), package_version(package)
        if not isinstance(then, str) or now is None:
            continue
        if _major_minor(then) == _major_minor(now) or (package, then, now) in _warned:
            continue
        _warned.add((package, then, now))
        warn(
            f"{what} was written under {package} {then}, and {package} {now} is installed: "
            f"the model's numerics (rotary scaling, attention kernels, weight conversion) "
            f"may differ between {_major_minor(then)} and {_major_minor(now)}, so the lens "
            f"may read it a little off. Install {package}=={then} to reproduce it exactly, "
            "or fit or train the lens again under this version.",
            ProvenanceWarning,
        )


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])
