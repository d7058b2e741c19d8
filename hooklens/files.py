"""Atomic file writes: readers (and a run killed mid-write) never see half a file.

A file is written to a temporary file beside its target, flushed to disk (`fsync`), and
renamed over the target (atomic on POSIX); the directory is flushed after the rename, so
that a power cut leaves the old file or the new one, never an empty one.

Temporary files are named `.{target name}.{pid}.{8 hex}.tmp` and created like a normal
`open()`: mode `0o666 & ~umask`, not the `0o600` of `tempfile.mkstemp`. A run killed
mid-write leaves its temporary behind; the next write of the same target removes those
that are stale: at least `STALE_AFTER_S` old and written by a process that no longer
exists on this machine (or named in the pid-less pattern of earlier versions). A fresh
temporary, or one whose process still runs, is another writer's and is left alone. (On a
filesystem shared between machines, another machine's writer stalled for that long can
have its temporary removed; its rename then fails, and no file is corrupted.)

Several files (`StagedWrites`) are each replaced atomically, but not all at once: a kill
between two renames leaves the first target new and the second old. Put last the file
that vouches for the others (a config recording their hashes, say) and check it on read.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

STALE_AFTER_S = 60.0


class StagedWrites:
    """Write several files, then rename them over their targets in the order staged.

    Inside the `with` block, `stage(target, write)` writes and flushes a temporary file;
    leaving the block normally renames every staged file over its target (then flushes
    the directories), leaving it by an exception removes them and touches no target.

    Examples:
        >>> with StagedWrites() as staged:                              # doctest: +SKIP
        ...     data = staged.stage("out/data.bin", lambda tmp: save(tmp))
        ...     staged.stage("out/index.json", lambda tmp: index(tmp, sha256_file(data)))
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target)

    def stage(self, target: str | os.PathLike, write: Callable[[str], object]) -> Path:
        """Call `write(tmp_path)` for a new temporary file beside `target` and flush it.

        Returns the temporary file's path (to hash it, say); it replaces `target` when
        the `with` block ends.
        """
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        tmp = _create_temporary(target)
        self._staged.append((tmp, target))
        mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 & ~umask
        write(str(tmp))
        if stat.S_IMODE(tmp.stat().st_mode) != mode:  # safetensors recreates it as 0o600
            os.chmod(tmp, mode)
        _fsync_file(tmp)
        return tmp

    def __enter__(self) -> StagedWrites:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            for tmp, _ in self._staged:  # left over only after an error
                tmp.unlink(missing_ok=True)

    def _commit(self) -> None:
        for tmp, target in self._staged:
            os.replace(tmp, target)
        for directory in dict.fromkeys(target.parent for _, target in self._staged):
            _fsync_directory(directory)


def atomic_write(target: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp_path)` for a temporary file beside `target`, flush it and rename
    it over `target` (atomic on POSIX); on any error the temporary file is removed."""
    with StagedWrites() as staged:
        staged.stage(target, write)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `target` atomically."""
    return atomic_write(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def temporary_pattern(target: str | os.PathLike) -> re.Pattern[str]:
    """The names of our temporary files for `target`: `.{name}.{pid}.{8 hex}.tmp`, and
    `.{name}.{8 chars}.tmp` of the `tempfile.mkstemp` versions before pids were recorded.
    """
    name = re.escape(Path(target).name)
    return re.compile(rf"\.{name}\.(?:(?P<pid>\d+)\.[0-9a-f]{{8}}|[a-z0-9_]{{8}})\.tmp")


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writes of `target` left; return them.

    Only our own names (`temporary_pattern`), only files at least `STALE_AFTER_S` old,
    and only when the process named in them is gone.
    """
    target = Path(target)
    pattern = temporary_pattern(target)
    now = time.time()
    removed: list[Path] = []
    try:
        candidates = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in candidates:
        match = pattern.fullmatch(path.name)
        if match is None:
            continue
        try:
            age = now - path.lstat().st_mtime
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
        pid = match["pid"]
        if age < STALE_AFTER_S or (pid is not None and _process_exists(int(pid))):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


# --- internals ------------------------------------------------------------------------------


def _create_temporary(target: Path) -> Path:
    # O_EXCL as mkstemp does, but mode 0o666 so the umask decides, as for a normal open().
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (the rename). Windows cannot open a directory, and
    some filesystems refuse to fsync one; there the rename is as durable as they make it."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _process_exists(pid: int) -> bool:
    """Whether process `pid` runs on this machine (assumed so where we cannot tell)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True
