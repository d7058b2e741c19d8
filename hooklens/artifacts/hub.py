"""Pretrained lenses: resolve a lens by name on the Hugging Face hub, in its cache, or on disk.

The tuned-lens project publishes its lenses in the Hugging Face *space*
`AlignmentResearch/tuned-lens`, one folder per model: `lens/<model name>/config.json` and
`params.pt`. `load_artifacts` finds such a folder

1. on disk, when `resource_id` is a folder holding `config.json` (or `repo_id` is a local
   folder laid out like the hub repository);
2. otherwise through `huggingface_hub` (its cache, `revision`, `HF_HUB_OFFLINE`), in the
   repository given by `repo_id`, else `$TUNED_LENS_REPO_ID`, else the tuned-lens space.

Jacobian lenses are single `.pt` files: `resolve_jacobian_lens` turns a local path, a
short name from TransformerLens's registry of published lenses (`"gpt2-small"`), or a hub
file (`repo_id=` + `filename=`, or `"owner/repo/path/in/repo.pt"`) into a local path,
downloading through `hf_hub_download` (its cache, `HF_HUB_OFFLINE`) when needed.

Kept apart from `artifacts.py`, which only knows file formats: this module is the one
that talks to the network.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hooklens.artifacts import (
    CONFIG_FILE,
    PARAMS_FILE,
    TUNED_LENS_PARAMS_FILE,
)
from hooklens.artifacts import (  # re-exported: defined beside the files it looks for
    LensNotFoundError as LensNotFoundError,
)
from hooklens.errors import HooklensError, InputError, LensMismatchError

DEFAULT_REPO_ID = "AlignmentResearch/tuned-lens"
DEFAULT_REPO_TYPE = "space"
LENS_SUBFOLDER = "lens"


class HubUnreachableError(HooklensError, ConnectionError):
    """The lens is not in the local cache and the hub cannot be reached."""


def lens_repository(repo_id: str | None = None, repo_type: str | None = None) -> tuple[str, str]:
    """The repository to read lenses from, and its type.

    `repo_id` defaults to `$TUNED_LENS_REPO_ID`, then the tuned-lens space. `repo_type`
    defaults to `$TUNED_LENS_REPO_TYPE`, then `"space"` for the tuned-lens space and
    `"model"` for any other repository (the usual kind for a repository of your own;
    tuned-lens 0.2 assumes `"space"` for every repository).
    """
    repo_id = repo_id or os.environ.get("TUNED_LENS_REPO_ID") or DEFAULT_REPO_ID
    if repo_type is None:
        repo_type = os.environ.get("TUNED_LENS_REPO_TYPE") or (
            DEFAULT_REPO_TYPE if repo_id == DEFAULT_REPO_ID else "model"
        )
    return repo_id, repo_type


def load_artifacts(
    resource_id: str,
    repo_id: str | None = None,
    repo_type: str | None = None,
    revision: str | None = None,
    config_file: str = CONFIG_FILE,
    ckpt_file: str | None = None,
    subfolder: str = LENS_SUBFOLDER,
    cache_dir: str | Path | None = None,
) -> tuple[Path, Path]:
    """Paths of a lens's config and parameters, downloading them if needed.

    Args:
        resource_id: the lens's name in the repository (a model name such as
            `"EleutherAI/pythia-160m-deduped"`), or a local folder holding the lens.
        repo_id: a hub repository, or a local folder laid out like one
            (`<subfolder>/<resource_id>/config.json`). See `lens_repository`.
        repo_type: `"model"`, `"dataset"` or `"space"`. See `lens_repository`.
        revision: branch, tag or commit of the repository (default: its main branch).
        config_file: the config's file name.
        ckpt_file: the parameters' file name; by default `params.safetensors` (hooklens)
            and then `params.pt` (tuned-lens) are tried.
        subfolder: the folder of the repository that holds one folder per lens.
        cache_dir: the huggingface_hub cache to use (default: its own).

    Returns:
        `(config path, parameters path)`, as tuned-lens's `load_lens_artifacts` does.

    Raises:
        LensNotFoundError: no such lens; the message lists the available ones.
        HubUnreachableError: the lens is not cached and the hub cannot be reached.

    Examples:
        >>> from hooklens.hub import load_artifacts
        >>> config, params = load_artifacts("gpt2")                     # doctest: +SKIP
    """
    ckpt_files = [ckpt_file] if ckpt_file else [PARAMS_FILE, TUNED_LENS_PARAMS_FILE]
    local = _local_lens(Path(resource_id), config_file, ckpt_files)
    if local is not None:
        return local
    if repo_id is not None and Path(repo_id).is_dir():
        folder = Path(repo_id) / subfolder / resource_id
        local = _local_lens(folder, config_file, ckpt_files)
        if local is None:
            available = _lenses_in_folder(Path(repo_id) / subfolder, config_file)
            raise LensNotFoundError(_not_found(resource_id, repo_id, available))
        return local
    repo_id, repo_type = lens_repository(repo_id, repo_type)
    download = _Downloader(repo_id, repo_type, revision, subfolder, resource_id, cache_dir)
    config_path = download(config_file)
    assert config_path is not None  # not missing_ok: raises instead
    for name in ckpt_files:
        params_path = download(name, missing_ok=name != ckpt_files[-1])
        if params_path is not None:
            return config_path, params_path
    raise AssertionError("unreachable: the last parameter file raises when missing")


def available_lens_artifacts(
    repo_id: str | None = None,
    repo_type: str | None = None,
    revision: str | None = None,
    subfolder: str = LENS_SUBFOLDER,
    config_file: str = CONFIG_FILE,
    cache_dir: str | Path | None = None,
) -> list[str]:
    """Names of the lenses in a repository (on the hub, or in its cache when offline).

    Offline, only the lenses already in the huggingface_hub cache are listed.

    Raises:
        LensNotFoundError: online, no such repository, revision or folder (or it is
            private or gated); the message names them and says what to do.
        HubUnreachableError: offline, and the revision is not in the cache; the message
            lists the revisions that are.

    Examples:
        >>> from hooklens.hub import available_lens_artifacts
        >>> "gpt2" in available_lens_artifacts()                        # doctest: +SKIP
        True
    """
    if repo_id is not None and Path(repo_id).is_dir():
        return _lenses_in_folder(Path(repo_id) / subfolder, config_file)
    repo_id, repo_type = lens_repository(repo_id, repo_type)
    if _offline():
        snapshot = _cached_snapshot(repo_id, repo_type, revision, cache_dir)
        if snapshot is None:
            raise HubUnreachableError(
                f"cannot list the lenses of {repo_type} {repo_id!r}: the hub cannot be reached "
                f"and {_what_is_cached(repo_id, repo_type, revision, cache_dir)}"
            )
        return _lenses_in_folder(snapshot / subfolder, config_file)
    files = _list_repo_files(repo_id, repo_type, revision)
    prefix, suffix = f"{subfolder}/", f"/{config_file}"
    return sorted(
        f[len(prefix) : -len(suffix)] for f in files if f.startswith(prefix) and f.endswith(suffix)
    )


def hub_model_name(adapter: Any) -> str:
    """The Hugging Face name of a model, which is what lenses are named after.

    TransformerLens names models by their short alias (`pythia-160m-deduped`); the
    tuned-lens repository uses the hub id (`EleutherAI/pythia-160m-deduped`).
    """
    from hooklens.models import EMBEDDED_MODELS

    name = adapter.model_name
    for embedded in EMBEDDED_MODELS.values():
        if name.lower() in (embedded.tl_name.lower(), embedded.hf_name.lower()):
            return embedded.hf_name
    if "/" in name:
        return name
    # TransformerLens 3.x keeps the official names beside HookedTransformer's loaders;
    # 4.x, which removed those loaders, in `supported_models`.
    for module in ("transformer_lens.loading_from_pretrained", "transformer_lens.supported_models"):
        try:
            official = importlib.import_module(module).get_official_model_name
        except (ImportError, AttributeError):
            continue
        try:
            return official(name)
        except ValueError:
            return name
    return name


# --- internals ------------------------------------------------------------------------------


def _local_lens(folder: Path, config_file: str, ckpt_files: list[str]) -> tuple[Path, Path] | None:
    if not (folder / config_file).is_file():
        return None
    for name in ckpt_files:
        if (folder / name).is_file():
            return folder / config_file, folder / name
    return None


def _lenses_in_folder(folder: Path, config_file: str) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.parent.relative_to(folder).as_posix() for p in folder.rglob(config_file))


def _not_found(resource_id: str, where: str, available: list[str]) -> str:
    listing = ", ".join(available) if available else "none"
    return (
        f"no lens named {resource_id!r} in {where}. Available: {listing}. Train one with "
        "`hooklens train --model <name>`, or pass lens_resource_id= / repo_id=."
    )


def _offline() -> bool:
    from huggingface_hub import constants

    from hooklens.models import hub_reachable

    return bool(constants.HF_HUB_OFFLINE) or not hub_reachable()


def _cached_snapshot(
    repo_id: str, repo_type: str, revision: str | None, cache_dir: str | Path | None
) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=True,
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None


def _what_is_cached(
    repo_id: str, repo_type: str, revision: str | None, cache_dir: str | Path | None
) -> str:
    """Why the cache cannot serve `revision` of a repository, and what to do: nothing of
    the repository is cached, or other revisions are (listed)."""
    from huggingface_hub import constants

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    refs = sorted(
        p.relative_to(folder / "refs").as_posix()
        for p in (folder / "refs").rglob("*")
        if p.is_file()
    )
    snapshots = (folder / "snapshots").iterdir() if (folder / "snapshots").is_dir() else ()
    commits = sorted(p.name for p in snapshots if p.is_dir())
    if not refs and not commits:
        return (
            f"nothing of it is in the huggingface_hub cache ({cache}). Connect once (the "
            "cache keeps what you download), or pass a local folder as repo_id."
        )
    cached = ", ".join(map(repr, refs)) or "no branch or tag"
    if commits:
        cached += f"; commits {', '.join(c[:12] for c in commits)}"
    return (
        f"revision {revision or 'main'!r} of it is not in the huggingface_hub cache ({cache}), "
        f"which holds {cached}. Pass one of those as revision= (none: 'main'), or connect "
        f"once to download {revision or 'main'!r}."
    )


def _repo_url(repo_id: str, repo_type: str) -> str:
    kind = {"model": "", "dataset": "datasets/", "space": "spaces/"}.get(repo_type, "")
    return f"https://huggingface.co/{kind}{repo_id}"


def _missing_repository(where: str, repo_id: str, repo_type: str) -> str:
    return (
        f"{where} does not exist, or is private or gated (log in with `hf auth login`, or "
        f"ask for access at {_repo_url(repo_id, repo_type)}); set repo_id= (and repo_type=) "
        "or $TUNED_LENS_REPO_ID to a repository that holds lenses"
    )


def _missing_revision(where: str, repo_id: str, repo_type: str, revision: str | None) -> str:
    return (
        f"{where}: the repository has no branch, tag or commit {revision or 'main'!r}. Pass "
        f"revision= one of those listed at {_repo_url(repo_id, repo_type)}/tree/main (or "
        "leave it out for the main branch)"
    )


def _list_repo_files(repo_id: str, repo_type: str, revision: str | None) -> list[str]:
    """`HfApi.list_repo_files`, with a missing repository or revision a `LensNotFoundError`."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_type} {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        return HfApi().list_repo_files(repo_id, repo_type=repo_type, revision=revision)
    except RepositoryNotFoundError as error:
        raise LensNotFoundError(_missing_repository(where, repo_id, repo_type)) from error
    except RevisionNotFoundError as error:
        raise LensNotFoundError(_missing_revision(where, repo_id, repo_type, revision)) from error
    except EntryNotFoundError as error:
        raise LensNotFoundError(
            f"{where}: the hub found nothing to list ({error}); check repo_id=, repo_type= "
            f"and revision= at {_repo_url(repo_id, repo_type)}"
        ) from error


class _Downloader:
    """`hf_hub_download` for one lens folder, with errors that say what to do."""

    def __init__(
        self,
        repo_id: str,
        repo_type: str,
        revision: str | None,
        subfolder: str,
        resource_id: str,
        cache_dir: str | Path | None,
    ):
        self.repo_id, self.repo_type, self.revision = repo_id, repo_type, revision
        self.subfolder, self.resource_id, self.cache_dir = subfolder, resource_id, cache_dir
        self.folder = f"{subfolder}/{resource_id}"

    def __call__(self, filename: str, *, missing_ok: bool = False) -> Path | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{self.repo_type} {self.repo_id!r}" + (
            f" at revision {self.revision!r}" if self.revision else ""
        )
        try:
            return Path(
                hf_hub_download(
                    self.repo_id,
                    filename,
                    subfolder=self.folder,
                    repo_type=self.repo_type,
                    revision=self.revision,
                    cache_dir=self.cache_dir,
                )
            )
        except LocalEntryNotFoundError as error:
            # Not cached, and no network (or HF_HUB_OFFLINE=1). Tell apart "this lens is
            # not in the cached snapshot" from "nothing of this repository is cached".
            snapshot = _cached_snapshot(self.repo_id, self.repo_type, self.revision, self.cache_dir)
            if snapshot is not None and (snapshot / self.subfolder).is_dir() and not missing_ok:
                cached = _lenses_in_folder(snapshot / self.subfolder, CONFIG_FILE)
                if self.resource_id not in cached:
                    raise LensNotFoundError(
                        _not_found(self.resource_id, f"the cached copy of {where}", cached)
                        + " (offline: only cached lenses are listed)"
                    ) from error
            if missing_ok:
                return None
            if snapshot is None:  # say which revisions the cache has, if any
                advice = _what_is_cached(
                    self.repo_id, self.repo_type, self.revision, self.cache_dir
                )
            else:
                advice = "Download it once while online, or pass the path of a local lens folder."
            raise HubUnreachableError(
                f"{self.folder}/{filename} of {where} is not in the huggingface_hub cache and "
                f"the hub cannot be reached (no network, or HF_HUB_OFFLINE=1): {advice}"
            ) from error
        except RepositoryNotFoundError as error:
            raise LensNotFoundError(
                _missing_repository(where, self.repo_id, self.repo_type)
            ) from error
        except RevisionNotFoundError as error:
            raise LensNotFoundError(
                _missing_revision(where, self.repo_id, self.repo_type, self.revision)
            ) from error
        except EntryNotFoundError as error:
            if missing_ok:
                return None
            available = available_lens_artifacts(
                self.repo_id,
                self.repo_type,
                self.revision,
                self.subfolder,
                cache_dir=self.cache_dir,
            )
            raise LensNotFoundError(_not_found(self.resource_id, where, available)) from error


# --- Jacobian lenses --------------------------------------------------------------------------
#
# Neuronpedia publishes fitted J-lenses as single `.pt` files in the model repository
# `neuronpedia/jacobian-lens`; TransformerLens ships a registry of them
# (`transformer_lens/tools/analysis/jacobian_lens_registry.json`: short name -> repo_id,
# filename, aliases, corpus; from TransformerLens 4 also one `revision` every entry is
# pinned at). We read that registry from the installed TransformerLens rather than keep a
# copy that would drift from it, and resolve a name exactly as its
# `JacobianLens.from_pretrained` does.

JACOBIAN_LENS_REGISTRY_PACKAGE = "transformer_lens.tools.analysis"
JACOBIAN_LENS_REGISTRY_FILE = "jacobian_lens_registry.json"
_PT_SUFFIX = ".pt"  # the reference format's file suffix (jacobian.REFERENCE_SUFFIX)
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
        from hooklens.model import _same_model_name

        return any(_same_model_name(name, model_name) for name in (self.name, *self.aliases))


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
        >>> from hooklens.hub import jacobian_lens_registry
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
        >>> from hooklens.hub import jacobian_lens_names
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
        >>> from hooklens.hub import jacobian_lens_file
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
        >>> from hooklens.hub import resolve_jacobian_lens
        >>> resolve_jacobian_lens("gpt2-small", model_name="gpt2")         # doctest: +SKIP
        PosixPath('/root/.cache/huggingface/hub/models--neuronpedia--jacobian-lens/snapshots/…/gpt2_jacobian_lens.pt')
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
        >>> from hooklens.hub import HubFile, download_hub_file
        >>> download_hub_file(HubFile("neuronpedia/jacobian-lens", "gpt2-small/jlens/"
        ...     "Salesforce-wikitext/gpt2_jacobian_lens.pt"))               # doctest: +SKIP
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            hf_hub_download(
                file.repo_id,
                file.filename,
                revision=file.revision,
                cache_dir=cache_dir,
                # Without a network huggingface_hub retries for ~25 s before it reads the
                # cache; when the hub is known unreachable, read the cache at once.
                local_files_only=_offline(),
            )
        )
    except HFValidationError as error:
        raise InputError(
            f"{file.repo_id!r} is not a hub repository id (`owner/name`): pass repo_id= with "
            "the repository, or the path of a local file or folder"
        ) from error
    except LocalEntryNotFoundError as error:  # before EntryNotFoundError, its base class
        raise HubUnreachableError(_not_cached_message(file, cache_dir)) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise LensNotFoundError(
            f"{file}: the repository or revision does not exist, or is private or gated "
            "(log in with `hf auth login`)"
        ) from error
    except EntryNotFoundError as error:
        raise LensNotFoundError(
            f"{file}: the repository has no such file; its files are listed at "
            f"https://huggingface.co/{file.repo_id}/tree/{file.revision or 'main'}"
        ) from error


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
    if source.endswith(_PT_SUFFIX) or source.count("/") > 1 or source.startswith(_LOCAL_PREFIXES):
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
        and source.endswith(_PT_SUFFIX)
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
        f"lenses).{hint} The registry names are listed by hooklens.hub.jacobian_lens_registry(); "
        "a file of a hub repository is given as repo_id= and filename=, or as "
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
    warnings.warn(message, stacklevel=4)


def _not_cached_message(file: HubFile, cache_dir: str | Path | None) -> str:
    from huggingface_hub import constants, hf_hub_url

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    folder = f"models--{file.repo_id.replace('/', '--')}"
    revision = f" --revision {file.revision}" if file.revision else ""
    return (
        f"{file} is not in the huggingface_hub cache ({cache}) and the hub cannot be reached "
        "(no network, or HF_HUB_OFFLINE=1). On a machine online, run "
        f"`hf download {file.repo_id} {file.filename}{revision}` and copy "
        f"{folder} from its cache into {cache} (or point HF_HUB_CACHE at a copy); or "
        f"download {hf_hub_url(file.repo_id, file.filename, revision=file.revision)} and "
        "pass the path of the .pt file."
    )
