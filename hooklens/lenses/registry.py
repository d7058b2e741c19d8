"""Which lens is in a file, and loading it for a model: one table entry per lens type.

`LENS_TYPES` lists every lens that lives in files: how to recognise it (a file suffix,
the `lens_type` its `config.json` records, or a name that is no local path: a published
lens), the class whose `load` reads it, and what a refusal can say. `lens_file_type`
reads the table; `load_lens` loads any of them for a model and, when the lens does not
fit, says which model load would (`Mismatch`), in the caller's words: `in_api_terms`
here, command-line flags in `hooklens.cli`. A third lens type with files is one more
entry.

Examples:
    >>> from hooklens.lenses.registry import lens_file_type
    >>> lens_file_type("lens.pt").name
    'Jacobian lens'
    >>> TunedLens.from_model(model).save("my-tuned-lens")
    >>> load_lens("my-tuned-lens", model)  # a folder, a .pt file, or a published name
    TunedLens(model='tiny-llama', ..., component='resid_pre', written by hooklens ...)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hooklens import models
from hooklens.artifacts import LensNotFoundError, jlens_registry, lens_dir_files
from hooklens.core import ModelAdapter, WeightProcessing, same_model_name
from hooklens.errors import LensMismatchError, ProcessedWeightsError
from hooklens.lenses.base import Lens
from hooklens.lenses.jacobian import LENS_TYPE as JACOBIAN_LENS_TYPE
from hooklens.lenses.jacobian import REFERENCE_SUFFIX, JacobianLens
from hooklens.lenses.tuned import TunedLens, TunedLensConfig

PROCESSING_FLAGS = tuple(flag.name for flag in dataclasses.fields(WeightProcessing))
"""The fingerprint entries that record TransformerLens weight processing."""


@dataclass(frozen=True)
class Mismatch:
    """Why a lens does not fit a model, and which model load would fit it: the model the
    lens was made for (`model_name`), or the same model with (`processing=True`) or
    without (`False`) TransformerLens's weight processing; neither: another checkpoint."""

    reason: str
    model_name: str | None = None
    processing: bool | None = None


def in_api_terms(mismatch: Mismatch) -> str:
    """`mismatch` as a sentence for a Python caller: its reason, then the load that fits."""
    if mismatch.model_name is not None:
        fix = f"load {models.loadable_name(mismatch.model_name)!r} (hooklens.models.load)"
    elif mismatch.processing is not None:
        fix = f"load the model with processing={mismatch.processing} (hooklens.models.load)"
    else:
        fix = "load the checkpoint it was trained on"
    return f"{mismatch.reason}; {fix}"


def _tuned_lens_mismatch(directory: Path, adapter: ModelAdapter) -> Mismatch | None:
    """What differs between the tuned lens saved in `directory` and the model, from its
    `config.json` (None: it cannot tell)."""
    try:
        config = json.loads((directory / "config.json").read_text())
        saved = config.get("fingerprint") or {}
        name = config.get("base_model_name_or_path") or saved["model_name"]
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    sizes = {"d_model": config.get("d_model"), "n_layers": config.get("num_hidden_layers")}
    sizes |= {key: saved[key] for key in ("d_model", "n_layers", "d_vocab") if key in saved}
    found = {key: getattr(adapter, key) for key in sizes}
    if not same_model_name(name, adapter.model_name) or sizes != found:
        return Mismatch(
            f"this lens was trained for {name!r}, the model is {adapter.model_name!r}",
            model_name=name,
        )
    actual = adapter.processing
    if saved and any(saved.get(flag) != getattr(actual, flag) for flag in PROCESSING_FLAGS):
        was = "processed" if any(saved.get(flag) for flag in PROCESSING_FLAGS) else "unprocessed"
        return Mismatch(
            f"this lens was trained on {was} weights (TransformerLens's fold_ln, "
            "center_writing_weights, center_unembed), the model was loaded "
            f"{'without' if was == 'processed' else 'with'} them",
            processing=was == "processed",
        )
    if not saved and actual.center_writing_weights:
        return Mismatch(
            "this tuned-lens artifact reads the raw residual stream, and the model's "
            "writing weights were centred by TransformerLens",
            processing=False,
        )
    if saved:
        return Mismatch(
            f"this lens was trained on another checkpoint of {name!r} (its final norm or "
            "unembedding differ from this model's)"
        )
    return None


def _trained_on_processed(directory: Path) -> bool:
    """Whether the lens saved in `directory` records TransformerLens weight processing."""
    try:
        saved = json.loads((directory / "config.json").read_text()).get("fingerprint") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return any(saved.get(flag) for flag in PROCESSING_FLAGS)


@dataclass(frozen=True)
class LensFileType:
    """One kind of lens that lives in files.

    Attributes:
        name: what it is called in messages and report sections ("tuned lens").
        lens_class: its class.
        load: what reads it for a model: `load(source, model=model)`.
        lens_type: the `lens_type` its `config.json` records.
        file_suffix: the suffix of its single-file format, if it has one.
        find_published: for a source that is no local path, where the published lens
            of that name is (a local `Path` or a `jlens_registry.HubFile`); None: no
            published lenses.
        reads_raw_weights: it reads raw activations, so a TransformerLens-processed model
            is refused (`ProcessedWeightsError`).
        mismatch: what differs between a saved lens and a model, from its files.
    """

    name: str
    lens_class: type[Lens]
    load: Callable[..., Lens]
    lens_type: str
    file_suffix: str | None = None
    find_published: Callable[..., Path | jlens_registry.HubFile] | None = None
    reads_raw_weights: bool = False
    mismatch: Callable[[Path, ModelAdapter], Mismatch | None] | None = None


TUNED_LENS = LensFileType(
    "tuned lens",
    TunedLens,
    TunedLens.load,
    TunedLensConfig.lens_type,
    mismatch=_tuned_lens_mismatch,
)
JACOBIAN_LENS = LensFileType(
    "Jacobian lens",
    JacobianLens,
    JacobianLens.load,
    JACOBIAN_LENS_TYPE,
    file_suffix=REFERENCE_SUFFIX,
    find_published=jlens_registry.jacobian_lens_file,
    reads_raw_weights=True,
)
LENS_TYPES: tuple[LensFileType, ...] = (JACOBIAN_LENS, TUNED_LENS)
"""Every lens type with files; a directory whose config names none of them is a tuned lens
(tuned-lens's own configs record no `lens_type` of ours)."""
DEFAULT_LENS_TYPE = TUNED_LENS


def _config_lens_type(path: Path) -> Any:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("lens_type") if isinstance(config, dict) else None


def lens_file_type(source: str | os.PathLike) -> LensFileType:
    """The type of lens at `source`: by its file suffix, by the `lens_type` of its
    `config.json`, or, for a `source` that is no local path, the type with published
    lenses."""
    path = Path(source)
    if not path.exists():
        return next(kind for kind in LENS_TYPES if kind.find_published is not None)
    for kind in LENS_TYPES:
        if kind.file_suffix is not None and path.suffix == kind.file_suffix:
            return kind
    lens_type = _config_lens_type(path)
    return next((kind for kind in LENS_TYPES if kind.lens_type == lens_type), DEFAULT_LENS_TYPE)


def lens_type_of(lens: Lens) -> LensFileType | None:
    """The table entry of a loaded lens (None: a lens without files, the logit lens)."""
    return next((kind for kind in LENS_TYPES if isinstance(lens, kind.lens_class)), None)


def check_lens_source(source: str, model_name: str | None = None) -> None:
    """Refuse, before any model loads, a `source` that holds no lens.

    A `source` that is no local path may name a published lens (for a Jacobian lens: a
    short name in TransformerLens's registry, or `owner/repo/path.pt` on the hub): it is
    resolved and downloaded here, so an unknown name, a registry lens for another model
    than `model_name`, or an uncached file offline is said before the model loads.
    """
    path = Path(source)
    if not path.exists():
        for kind in LENS_TYPES:
            if kind.find_published is None:
                continue
            try:
                found = kind.find_published(source, model_name=model_name)
            except LensNotFoundError:
                if os.sep in source or path.suffix:
                    continue  # a path, not a name: say what is missing there, below
                raise
            if isinstance(found, jlens_registry.HubFile):
                jlens_registry.download_hub_file(found)
                return
    for kind in LENS_TYPES:
        if kind.file_suffix is not None and path.suffix == kind.file_suffix:
            if not path.is_file():
                raise LensNotFoundError(f"no {kind.name} at {source}: the file does not exist")
            return
    lens_dir_files(source)


def processing_conflict(sources: Sequence[str]) -> tuple[str, str] | None:
    """`(processed, raw)`: a lens trained on TransformerLens-processed weights and a lens
    that reads raw activations among `sources`, which no one model load reads both; None
    when there is no such pair."""
    raw = [s for s in sources if lens_file_type(s).reads_raw_weights]
    processed = [s for s in sources if s not in raw and _trained_on_processed(Path(s))]
    return (processed[0], raw[0]) if raw and processed else None


def load_lens(
    source: str,
    model: Any,
    *,
    advice: Callable[[Mismatch], str] = in_api_terms,
) -> Lens:
    """The lens at `source` (any type of `LENS_TYPES`) for `model`.

    A lens for another model, or for other weight processing, is refused with a
    `LensMismatchError` `"{source}: {advice(mismatch)}"`, naming the model load that
    fits it (`Mismatch`); `advice` words it (`in_api_terms`; the command line names its
    flags). A `source` that is no local path is a published lens (`check_lens_source`).
    """
    kind = lens_file_type(source)
    try:
        return kind.load(source, model=model)
    except LensMismatchError as error:
        mismatch = _mismatch(kind, source, model, error)
        if mismatch is None:
            raise
        raise LensMismatchError(f"{source}: {advice(mismatch)}") from error


def _mismatch(
    kind: LensFileType, source: str, model: Any, error: LensMismatchError
) -> Mismatch | None:
    if isinstance(error, ProcessedWeightsError):
        return Mismatch(
            f"a {kind.name} reads raw activations, and the model was loaded with "
            "TransformerLens's weight processing",
            processing=False,
        )
    if kind.mismatch is None:
        return None
    return kind.mismatch(Path(source), ModelAdapter(model))
