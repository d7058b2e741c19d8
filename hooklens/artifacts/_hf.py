"""Internal. huggingface_hub plumbing: the offline test, downloads, the cache, error wording.

The one module of hooklens that talks to the network. It imports `huggingface_hub` only
inside its functions, so importing a lens (or any of `hooklens.artifacts`) loads nothing
of it; the tuned-lens catalogue (`hub`) and TransformerLens's J-lens registry
(`jlens_registry`) call it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from hooklens.errors import HubUnreachableError, InputError, LensNotFoundError


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached (False under `HF_HUB_OFFLINE=1`)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1]
    try:
        socket.create_connection((host.split("/")[0], 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def offline() -> bool:
    """Whether to read only the cache: `HF_HUB_OFFLINE`, or the hub cannot be reached."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or not hub_reachable()


def cached_snapshot(
    repo_id: str, repo_type: str, revision: str | None, cache_dir: str | Path | None
) -> Path | None:
    """The cached snapshot folder of a repository at `revision`, or None if not cached."""
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


def what_is_cached(
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


def repo_url(repo_id: str, repo_type: str) -> str:
    """The repository's page on the hub."""
    kind = {"model": "", "dataset": "datasets/", "space": "spaces/"}.get(repo_type, "")
    return f"https://huggingface.co/{kind}{repo_id}"


def missing_repository(where: str, repo_id: str, repo_type: str) -> str:
    """What to do about a repository the hub says does not exist."""
    return (
        f"{where} does not exist, or is private or gated (log in with `hf auth login`, or "
        f"ask for access at {repo_url(repo_id, repo_type)}); set repo_id= (and repo_type=) "
        "or $TUNED_LENS_REPO_ID to a repository that holds lenses"
    )


def missing_revision(where: str, repo_id: str, repo_type: str, revision: str | None) -> str:
    """What to do about a revision the repository does not have."""
    return (
        f"{where}: the repository has no branch, tag or commit {revision or 'main'!r}. Pass "
        f"revision= one of those listed at {repo_url(repo_id, repo_type)}/tree/main (or "
        "leave it out for the main branch)"
    )


def list_repo_files(repo_id: str, repo_type: str, revision: str | None) -> list[str]:
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
        raise LensNotFoundError(missing_repository(where, repo_id, repo_type)) from error
    except RevisionNotFoundError as error:
        raise LensNotFoundError(missing_revision(where, repo_id, repo_type, revision)) from error
    except EntryNotFoundError as error:
        raise LensNotFoundError(
            f"{where}: the hub found nothing to list ({error}); check repo_id=, repo_type= "
            f"and revision= at {repo_url(repo_id, repo_type)}"
        ) from error


def download_file(
    what: str,
    repo_id: str,
    filename: str,
    revision: str | None,
    cache_dir: str | Path | None,
) -> Path:
    """`hf_hub_download` of one file (`what` words it in errors), with errors that say
    what to do.

    Raises:
        HubUnreachableError: not in the cache, and the hub cannot be reached.
        LensNotFoundError: no such repository, revision or file on the hub.
        InputError: `repo_id` cannot be a hub repository id.
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
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                # Without a network huggingface_hub retries for ~25 s before it reads the
                # cache; when the hub is known unreachable, read the cache at once.
                local_files_only=offline(),
            )
        )
    except HFValidationError as error:
        raise InputError(
            f"{repo_id!r} is not a hub repository id (`owner/name`): pass repo_id= with "
            "the repository, or the path of a local file or folder"
        ) from error
    except LocalEntryNotFoundError as error:  # before EntryNotFoundError, its base class
        message = not_cached_message(what, repo_id, filename, revision, cache_dir)
        raise HubUnreachableError(message) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise LensNotFoundError(
            f"{what}: the repository or revision does not exist, or is private or gated "
            "(log in with `hf auth login`)"
        ) from error
    except EntryNotFoundError as error:
        raise LensNotFoundError(
            f"{what}: the repository has no such file; its files are listed at "
            f"https://huggingface.co/{repo_id}/tree/{revision or 'main'}"
        ) from error


def not_cached_message(
    what: str, repo_id: str, filename: str, revision: str | None, cache_dir: str | Path | None
) -> str:
    """Why the file `what` names cannot be read offline, and how to bring it onto the machine."""
    from huggingface_hub import constants, hf_hub_url

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    folder = f"models--{repo_id.replace('/', '--')}"
    pinned = f" --revision {revision}" if revision else ""
    return (
        f"{what} is not in the huggingface_hub cache ({cache}) and the hub cannot be reached "
        "(no network, or HF_HUB_OFFLINE=1). On a machine online, run "
        f"`hf download {repo_id} {filename}{pinned}` and copy "
        f"{folder} from its cache into {cache} (or point HF_HUB_CACHE at a copy); or "
        f"download {hf_hub_url(repo_id, filename, revision=revision)} and "
        "pass the path of the .pt file."
    )
