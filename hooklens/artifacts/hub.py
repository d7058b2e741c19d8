"""The tuned-lens catalogue: a published tuned lens by name, on the hub, in its cache, or on disk.

The tuned-lens project publishes its lenses in the Hugging Face *space*
`AlignmentResearch/tuned-lens`, one folder per model: `lens/<model name>/config.json` and
`params.pt`. `load_artifacts` finds such a folder

1. on disk, when `resource_id` is a folder holding `config.json` (or `repo_id` is a local
   folder laid out like the hub repository);
2. otherwise through `huggingface_hub` (its cache, `revision`, `HF_HUB_OFFLINE`), in the
   repository given by `repo_id`, else `$TUNED_LENS_REPO_ID`, else the tuned-lens space.

Published Jacobian lenses are TransformerLens's registry (`jlens_registry`); the file
formats are `lens_dir`'s, the huggingface_hub plumbing `_hf`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from hooklens.artifacts import _hf
from hooklens.artifacts.lens_dir import CONFIG_FILE, PARAMS_FILE, TUNED_LENS_PARAMS_FILE
from hooklens.errors import HubUnreachableError, LensNotFoundError

__all__ = [
    "DEFAULT_REPO_ID",
    "DEFAULT_REPO_TYPE",
    "LENS_SUBFOLDER",
    "HubUnreachableError",
    "LensNotFoundError",
    "available_lens_artifacts",
    "lens_repository",
    "load_artifacts",
]

DEFAULT_REPO_ID = "AlignmentResearch/tuned-lens"
DEFAULT_REPO_TYPE = "space"
LENS_SUBFOLDER = "lens"


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
        >>> from hooklens.artifacts import load_artifacts
        >>> config, params = load_artifacts("gpt2")                     # doctest: +SKIP
        >>> lens.save("repo/lens/tiny")  # a local folder laid out like the repository
        >>> config, params = load_artifacts("tiny", repo_id="repo")
        >>> config.name, params.name
        ('config.json', 'params.safetensors')
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
        >>> from hooklens.artifacts import available_lens_artifacts
        >>> "gpt2" in available_lens_artifacts()                        # doctest: +SKIP
        True
        >>> lens.save("repo/lens/tiny")  # a local folder laid out like the repository
        >>> available_lens_artifacts("repo")
        ['tiny']
    """
    if repo_id is not None and Path(repo_id).is_dir():
        return _lenses_in_folder(Path(repo_id) / subfolder, config_file)
    repo_id, repo_type = lens_repository(repo_id, repo_type)
    if _hf.offline():
        snapshot = _hf.cached_snapshot(repo_id, repo_type, revision, cache_dir)
        if snapshot is None:
            raise HubUnreachableError(
                f"cannot list the lenses of {repo_type} {repo_id!r}: the hub cannot be reached "
                f"and {_hf.what_is_cached(repo_id, repo_type, revision, cache_dir)}"
            )
        return _lenses_in_folder(snapshot / subfolder, config_file)
    files = _hf.list_repo_files(repo_id, repo_type, revision)
    prefix, suffix = f"{subfolder}/", f"/{config_file}"
    return sorted(
        f[len(prefix) : -len(suffix)] for f in files if f.startswith(prefix) and f.endswith(suffix)
    )


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
            snapshot = _hf.cached_snapshot(
                self.repo_id, self.repo_type, self.revision, self.cache_dir
            )
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
                advice = _hf.what_is_cached(
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
                _hf.missing_repository(where, self.repo_id, self.repo_type)
            ) from error
        except RevisionNotFoundError as error:
            raise LensNotFoundError(
                _hf.missing_revision(where, self.repo_id, self.repo_type, self.revision)
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
