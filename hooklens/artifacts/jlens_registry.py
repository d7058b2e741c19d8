"""TransformerLens's registry of published Jacobian lenses, and a J-lens file by name.

Neuronpedia publishes fitted J-lenses as single `.pt` files in the model repository
`neuronpedia/jacobian-lens`; TransformerLens ships a registry of them
(`transformer_lens/tools/analysis/jacobian_lens_registry.json`: short name -> repo_id,
filename, aliases, corpus; from TransformerLens 4 also one `revision` every entry is
pinned at). We read that registry from the installed TransformerLens rather than keep a
copy that would drift from it, and resolve a name exactly as its
`JacobianLens.from_pretrained` does.

`resolve_jacobian_lens` turns a local path, a short name of the registry (`"gpt2-small"`),
or a hub file (`repo_id=` + `filename=`, or `"owner/repo/path/in/repo.pt"`) into a local
path, downloading through `hf_hub_download` (its cache, `HF_HUB_OFFLINE`) when needed.
Nothing here touches the network but that download (`_hf`).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from hooklens.artifacts import _hf
from hooklens.artifacts.jlens_pt import REFERENCE_SUFFIX
from hooklens.core import same_model_name
from hooklens.errors import (
    HubUnreachableError,
    InputError,
    LensMismatchError,
    LensNotFoundError,
    warn,
)

__all__ = [
    "JACOBIAN_LENS_REGISTRY_FILE",
    "JACOBIAN_LENS_REGISTRY_PACKAGE",
    "HubFile",
    "HubUnreachableError",
    "JacobianLensEntry",
    "download_hub_file",
    "jacobian_lens_file",
    "jacobian_lens_names",
    "jacobian_lens_registry",
    "resolve_jacobian_lens",
]

JACOBIAN_LENS_REGISTRY_PACKAGE = "transformer_lens.tools.analysis"
JACOBIAN_LENS_REGISTRY_FILE = "jacobian_lens_registry.json"
_LOCAL_PREFIXES = ("/", "./", "../", "~")


@dataclass(frozen=True)
class JacobianLensEntry:
    """One published J-lens in TransformerLens's registry.

    Attributes:
        name: the short name (`"gpt2-small"`), the key `from_pretrained` takes.
        repo_id: the hub model repository holding the file (`"neuronpedia/jacobian-lens"`).
        filename: the file's path inside the repository.
        aliases: Hugging Face model ids that also name this entry (`"openai-community/gpt2"`).
        corpus: the text the lens was fitted on, if the registry says.
        revision: the commit every registry entry is downloaded at (TransformerLens 4
            pins one), or None for the repository's main branch.
    """

    name: str
    repo_id: str
    filename: str
    aliases: tuple[str, ...] = ()
    corpus: str | None = None
    revision: str | None = None

    def fits(self, model_name: str) -> bool:
        """Whether the lens was fitted for `model_name` (its short name or an alias; an
        owner prefix and case do not matter, as everywhere in hooklens)."""
        return any(same_model_name(name, model_name) for name in (self.name, *self.aliases))


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face hub repository, at a revision (None: the main branch).

    `entry` is the registry entry it was found through, or that names the same file.
    """

    repo_id: str
    filename: str
    revision: str | None = None
    entry: JacobianLensEntry | None = None

    def __str__(self) -> str:
        at = f" at revision {self.revision}" if self.revision else ""
        return f"{self.filename} in hub repository {self.repo_id}{at}"


def jacobian_lens_registry() -> dict[str, JacobianLensEntry]:
    """TransformerLens's registry of published Jacobian lenses, by short name.

    Read from the installed TransformerLens (`jacobian_lens_registry.json` beside its
    `JacobianLens`), so it lists exactly the names its `JacobianLens.from_pretrained`
    resolves.

    Raises:
        LensNotFoundError: the installed TransformerLens ships no registry.

    Examples:
        >>> from hooklens.artifacts import jacobian_lens_registry
        >>> entry = jacobian_lens_registry()["gpt2-small"]
        >>> entry.repo_id, entry.filename
        ('neuronpedia/jacobian-lens', 'gpt2-small/jlens/Salesforce-wikitext/gpt2_jacobian_lens.pt')
    """
    raw = json.loads(_registry_text())
    revision = raw.get("revision") if isinstance(raw.get("revision"), str) else None
    return {
        name: JacobianLensEntry(
            name=name,
            repo_id=fields["repo_id"],
            filename=fields["filename"],
            aliases=tuple(fields.get("aliases") or ()),
            corpus=fields.get("corpus"),
            revision=revision,
        )
        # Keys such as "_comment" and "revision" describe the registry, not a lens.
        for name, fields in raw.items()
        if isinstance(fields, dict) and not name.startswith("_")
    }


def jacobian_lens_names(model_name: str) -> list[str]:
    """Registry names of the published J-lenses fitted for `model_name`.

    Examples:
        >>> from hooklens.artifacts import jacobian_lens_names
        >>> jacobian_lens_names("openai-community/gpt2")
        ['gpt2-small']
    """
    return [name for name, entry in jacobian_lens_registry().items() if entry.fits(model_name)]


def jacobian_lens_file(
    source: str | os.PathLike | None,
    *,
    repo_id: str | None = None,
    filename: str | None = None,
    revision: str | None = None,
    model_name: str | None = None,
    strict: bool = True,
) -> Path | HubFile:
    """Where a Jacobian lens is, without touching the network: a local path, or a hub file.

    With `filename=`, the file is `filename` in the hub repository `repo_id`, or in the
    repository `source` names (TransformerLens's `from_pretrained(repo_id,
    filename=...)`), or in `source` when that is a local folder. With only `repo_id=`,
    `source` is the file's path inside that repository. Otherwise `source` is, in turn:

    1. an existing local file or folder: returned as it is;
    2. `"owner/repo/path/in/repo.pt"`: a hub repository id is always exactly
       `owner/repo`, so the first two parts name the repository and the rest the file.
       Only a name ending in `.pt`, not starting with `/`, `.` or `~`, reads so; any
       other missing path with a folder in it is a missing local path;
    3. a short name or model id in TransformerLens's registry (`"gpt2-small"`,
       `"google/gemma-2-2b"`), looked up as its `JacobianLens.from_pretrained` does,
       at the revision the registry pins (TransformerLens 4) unless `revision=`.

    Args:
        source: see above; None only with `repo_id=` and `filename=`.
        repo_id: a hub model repository.
        filename: the file's path inside the repository (or inside a local folder).
        revision: branch, tag or commit; default the registry's pin for a registry
            name, else the main branch.
        model_name: the model the lens is for. A registry entry fitted for another
            model is refused before anything downloads.
        strict: with False, such a mismatch is only a warning.

    Raises:
        LensNotFoundError: no such local path or registry name (close names suggested),
            or no registry in the installed TransformerLens.
        LensMismatchError: the registry says the lens is for another model.
        InputError: arguments that contradict each other.

    Examples:
        >>> from hooklens.artifacts import jacobian_lens_file
        >>> jacobian_lens_file("gpt2-small").filename
        'gpt2-small/jlens/Salesforce-wikitext/gpt2_jacobian_lens.pt'
        >>> str(jacobian_lens_file("me/my-lenses/gpt2/jlens.pt"))
        'gpt2/jlens.pt in hub repository me/my-lenses'
    """
    if filename is not None:
        found = _explicit_file(source, repo_id, filename, revision)
    elif repo_id is not None:
        if source is None:
            raise InputError(
                f"repo_id={repo_id!r} needs the file's path in the repository: pass "
                "filename= (or the path as the first argument)"
            )
        found = HubFile(repo_id, os.fspath(source), revision)
    elif source is None:
        raise InputError(
            "pass a Jacobian lens: a local path, a registry name, or repo_id= and filename="
        )
    else:
        found = _implicit_file(os.fspath(source), revision)
    if isinstance(found, HubFile):
        found = _with_registry_entry(found)
        if model_name is not None and found.entry is not None:
            _check_registry_model(found, model_name, strict=strict)
    return found


def resolve_jacobian_lens(
    source: str | os.PathLike | None,
    *,
    repo_id: str | None = None,
    filename: str | None = None,
    revision: str | None = None,
    model_name: str | None = None,
    strict: bool = True,
    cache_dir: str | Path | None = None,
) -> Path:
    """The local path of a Jacobian lens, downloading it from the hub if needed.

    `source`, `repo_id`, `filename`, `revision`, `model_name` and `strict` are those of
    `jacobian_lens_file`, which says how they combine. A hub file comes through
    `huggingface_hub.hf_hub_download`, so its cache, `HF_HUB_CACHE` and
    `HF_HUB_OFFLINE=1` work as for any hub download: a file in the cache is read
    without the network.

    Raises:
        LensNotFoundError: no such path, registry name, repository or file.
        LensMismatchError: the registry says the lens is for another model.
        HubUnreachableError: the file is not in the cache and the hub cannot be reached;
            the message names the file and how to bring it onto the machine.

    Examples:
        >>> from hooklens.artifacts import resolve_jacobian_lens
        >>> resolve_jacobian_lens("gpt2-small", model_name="gpt2")         # doctest: +SKIP
        PosixPath('/root/.cache/huggingface/hub/models--neuronpedia--jacobian-lens/snapshots/…/gpt2_jacobian_lens.pt')
        >>> from hooklens import JacobianLens
        >>> path = JacobianLens.fit(model, ["The cat sat on the mat"],
        ...                         skip_first_positions=1).save("jlens.pt")
        >>> resolve_jacobian_lens("jlens.pt").name  # a local file is its own path
        'jlens.pt'
    """
    found = jacobian_lens_file(
        source,
        repo_id=repo_id,
        filename=filename,
        revision=revision,
        model_name=model_name,
        strict=strict,
    )
    if isinstance(found, Path):
        return found
    return download_hub_file(found, cache_dir=cache_dir)


def download_hub_file(file: HubFile, *, cache_dir: str | Path | None = None) -> Path:
    """`hf_hub_download` of one file, with errors that say what to do.

    Raises:
        HubUnreachableError: not in the cache, and the hub cannot be reached.
        LensNotFoundError: no such repository, revision or file on the hub.
        InputError: `file.repo_id` cannot be a hub repository id.

    Examples:
        >>> from hooklens.artifacts import HubFile, download_hub_file
        >>> download_hub_file(HubFile("neuronpedia/jacobian-lens", "gpt2-small/jlens/"
        ...     "Salesforce-wikitext/gpt2_jacobian_lens.pt"))               # doctest: +SKIP
    """
    return _hf.download_file(str(file), file.repo_id, file.filename, file.revision, cache_dir)


def _registry_text() -> str:
    """The registry's JSON, from the installed TransformerLens."""
    import importlib.resources

    try:
        resource = importlib.resources.files(JACOBIAN_LENS_REGISTRY_PACKAGE)
        return resource.joinpath(JACOBIAN_LENS_REGISTRY_FILE).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise LensNotFoundError(
            f"the installed TransformerLens ({_transformer_lens_version()}) has no "
            f"{JACOBIAN_LENS_REGISTRY_FILE} (its registry of published Jacobian lenses), so "
            "short names such as 'gpt2-small' cannot be resolved. Install a TransformerLens "
            "that ships it (`pip install -U transformer-lens`), or pass repo_id= and filename= "
            "(e.g. repo_id='neuronpedia/jacobian-lens') or the path of a local .pt file."
        ) from error


def _transformer_lens_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"transformer-lens {version('transformer-lens')}"
    except PackageNotFoundError:
        return "transformer-lens not installed"


def _explicit_file(
    source: str | os.PathLike | None, repo_id: str | None, filename: str, revision: str | None
) -> Path | HubFile:
    """`filename=` given: a file in `repo_id`, in the repository `source` names, or in
    the local folder `source`."""
    if source is not None and Path(source).is_dir() and repo_id is None:
        _refuse_revision_for_local(source, revision)
        return Path(source) / filename
    if source is not None and repo_id is not None and os.fspath(source) != repo_id:
        raise InputError(
            f"got the repository twice, as {os.fspath(source)!r} and repo_id={repo_id!r}: "
            "pass one of them with filename="
        )
    repository = repo_id if repo_id is not None else source
    if repository is None:
        raise InputError(f"filename={filename!r} needs the repository: pass repo_id=")
    return HubFile(os.fspath(repository), filename, revision)


def _implicit_file(source: str, revision: str | None) -> Path | HubFile:
    """`source` alone: a local path, a registry name, or `owner/repo/path.pt`."""
    if Path(source).exists():
        _refuse_revision_for_local(source, revision)
        return Path(source)
    if _is_hub_file_reference(source):
        owner, repo, path = source.split("/", 2)
        return HubFile(f"{owner}/{repo}", path, revision)
    if (
        source.endswith(REFERENCE_SUFFIX)
        or source.count("/") > 1
        or source.startswith(_LOCAL_PREFIXES)
    ):
        raise LensNotFoundError(
            f"no Jacobian lens at {source}: no such local file or folder (a file of a hub "
            "repository reads 'owner/repo/path/in/repo.pt', or pass repo_id= and filename=)"
        )
    entry = _registry_entry(source)
    return HubFile(entry.repo_id, entry.filename, revision or entry.revision, entry)


def _is_hub_file_reference(source: str) -> bool:
    parts = source.split("/")
    return (
        len(parts) >= 3
        and all(parts)
        and source.endswith(REFERENCE_SUFFIX)
        and not source.startswith(_LOCAL_PREFIXES)
        and "\\" not in source
    )


def _refuse_revision_for_local(source: str | os.PathLike, revision: str | None) -> None:
    if revision is not None:
        raise InputError(
            f"revision={revision!r} selects a version of a hub file, but {os.fspath(source)!r} "
            "is a local path: drop revision=, or name the hub file"
        )


def _registry_entry(name: str) -> JacobianLensEntry:
    """The entry `name` (a short name, else an alias) names, as TransformerLens looks it up."""
    registry = jacobian_lens_registry()
    if name in registry:
        return registry[name]
    for entry in registry.values():
        if name in entry.aliases:
            return entry
    message = _unknown_name_message(name, registry)
    if name.count("/") == 1:
        message += f" For a file of the hub repository {name!r}, pass filename=."
    raise LensNotFoundError(message)


def _unknown_name_message(name: str, registry: dict[str, JacobianLensEntry]) -> str:
    known = sorted({*registry, *(alias for e in registry.values() for alias in e.aliases)})
    by_lower = {k.lower(): k for k in known}
    close = [by_lower[k] for k in difflib.get_close_matches(name.lower(), by_lower, n=5)]
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return (
        f"{name!r} is neither a local file or folder nor a name in TransformerLens's registry "
        f"of published Jacobian lenses ({_transformer_lens_version()}, {len(registry)} "
        f"lenses).{hint} The registry names are listed by "
        "hooklens.artifacts.jacobian_lens_registry(); a file of a hub repository is given "
        "as repo_id= and filename=, or as "
        "'owner/repo/path/in/repo.pt'."
    )


def _with_registry_entry(file: HubFile) -> HubFile:
    """`file` with the registry entry naming the same repository file, if any."""
    if file.entry is not None:
        return file
    try:
        registry = jacobian_lens_registry()
    except LensNotFoundError:  # no registry: nothing to check the model against
        return file
    for entry in registry.values():
        if (entry.repo_id, entry.filename) == (file.repo_id, file.filename):
            return HubFile(file.repo_id, file.filename, file.revision, entry)
    return file


def _check_registry_model(file: HubFile, model_name: str, *, strict: bool) -> None:
    entry = file.entry
    assert entry is not None
    if entry.fits(model_name):
        return
    fitting = jacobian_lens_names(model_name)
    instead = (
        f"the registry's lens for it is {', '.join(map(repr, fitting))}"
        if fitting
        else "the registry has no lens for it: fit one with `hooklens fit-jlens`"
    )
    message = (
        f"{file} is the published Jacobian lens of {entry.name!r} "
        f"({', '.join(entry.aliases) or 'no aliases'}), but the model is {model_name!r}; "
        f"{instead}. Pass strict=False to load it anyway (a fine-tune of the same base)."
    )
    if strict:
        raise LensMismatchError(message)
    warn(message)
