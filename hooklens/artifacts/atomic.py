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

A write that fails for want of space, on a read-only file system or without permission
raises `OutputWriteError`: one line naming the target, the cause ("the disk is full", also
when `torch.save` says only "unexpected pos") and that the earlier file is kept; the
temporary is removed and no target is touched.

One run owning its outputs while it runs (`output_lock`) is `hooklens.artifacts.locks`.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from hooklens.errors import HooklensError, OutputWriteError

STALE_AFTER_S = 60.0
FULL_BELOW_BYTES = 1 << 20
"""A failed write with less free space than this left on its file system ran out of it."""


class StagedWrites:
    """Write several files, then rename them over their targets in the order staged.

    Inside the `with` block, `stage(target, write)` writes and flushes a temporary file;
    leaving the block normally renames every staged file over its target (then flushes
    the directories), leaving it by an exception removes them and touches no target.

    Examples:
        >>> from pathlib import Path
        >>> from hooklens.artifacts import sha256_file
        >>> def index(tmp, data):
        ...     Path(tmp).write_text(sha256_file(data))
        >>> with StagedWrites() as staged:
        ...     data = staged.stage("out/data.bin", lambda tmp: Path(tmp).write_bytes(b"data"))
        ...     _ = staged.stage("out/index.json", lambda tmp: index(tmp, data))
        >>> sorted(path.name for path in Path("out").iterdir())
        ['data.bin', 'index.json']
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target)

    def stage(self, target: str | os.PathLike, write: Callable[[str], object]) -> Path:
        """Call `write(tmp_path)` for a new temporary file beside `target` and flush it.

        Returns the temporary file's path (to hash it, say); it replaces `target` when
        the `with` block ends.
        """
        target = Path(target)
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(target)
            tmp = _create_temporary(target)
            self._staged.append((tmp, target))
            mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 & ~umask
            write(str(tmp))
            if stat.S_IMODE(tmp.stat().st_mode) != mode:  # safetensors recreates it as 0o600
                os.chmod(tmp, mode)
            _fsync_file(tmp)
        except Exception as error:
            # Asked here, while the temporary still fills the disk it filled.
            failure = write_error(target, error)
            if failure is None:
                raise
            raise failure from error
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
            try:
                os.replace(tmp, target)
            except OSError as error:
                failure = write_error(target, error)
                if failure is None:
                    raise
                raise failure from error
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
        if age < STALE_AFTER_S or (pid is not None and process_exists(int(pid))):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


# --- failed writes --------------------------------------------------------------------------

_WRITE_FAILURES = {
    errno.ENOSPC: ("the disk is full", "free some space there, or write elsewhere"),
    errno.EROFS: ("the file system is read-only", "write to a writable place"),
    errno.EACCES: ("permission denied", "write where you may, or change the permissions"),
    errno.EPERM: ("permission denied", "write where you may, or change the permissions"),
    errno.EFBIG: ("the file is too large for its file system", "write elsewhere"),
    errno.EIO: ("an input/output error (a failing disk?)", "check the disk, or write elsewhere"),
}
if hasattr(errno, "EDQUOT"):
    _WRITE_FAILURES[errno.EDQUOT] = (
        "the disk quota is exceeded",
        "free some space, or write elsewhere",
    )

# What torch.save and safetensors raise (RuntimeError, SafetensorError) when a write fails.
_SERIALIZER_FAILURE = re.compile(
    r"inline_container|PytorchStreamWriter|file write failed|I/O error|os error \d+"
)


def write_error(target: str | os.PathLike, error: BaseException) -> OutputWriteError | None:
    """`OutputWriteError` for an `error` that failed a write of `target` for want of space
    or permission (an `OSError`, or torch's and safetensors' own errors: torch says only
    "unexpected pos" on a full disk, so the file system is asked); `None` for any other
    error, which is not the disk's doing. Call it while a partial file still fills the disk.
    """
    cause = write_failure(Path(target), error)
    if cause is None:
        return None
    code, reason, advice = cause
    target = Path(target)
    kept = f"the earlier {target.name} is kept" if target.exists() else "nothing was written there"
    failure = OutputWriteError(
        f"could not write {target}: {reason}; {kept}" + (f": {advice}" if advice else "")
    )
    failure.errno = code  # type: ignore[misc]  # callers can still test for ENOSPC
    failure.filename = str(target)  # type: ignore[misc]
    return failure


def write_failure(target: Path, error: BaseException) -> tuple[int | None, str, str] | None:
    """`(errno, reason, advice)` for an `error` that failed a write of `target` and is the
    disk's doing (what `write_error` words), else `None`."""
    if isinstance(error, HooklensError):
        return None
    text = str(error)
    code = getattr(error, "errno", None) if isinstance(error, OSError) else None
    if not isinstance(error, OSError) and not _SERIALIZER_FAILURE.search(text):
        return None
    if code not in _WRITE_FAILURES:
        found = re.search(r"os error (\d+)", text)  # safetensors: Rust's io::Error
        if found is not None and int(found[1]) in _WRITE_FAILURES:
            code = int(found[1])
        else:  # torch: "open file failed with strerror: Read-only file system"
            code = next((c for c in _WRITE_FAILURES if os.strerror(c) in text), code)
    if code not in _WRITE_FAILURES:
        code = _file_system_state(target.parent) or code
    if code not in _WRITE_FAILURES:
        if isinstance(error, OSError):
            return None  # a missing file, a name too long...: the OSError says it best
        return code, f"the write failed ({_first_line(text)})", ""
    reason, advice = _WRITE_FAILURES[code]
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)):
        free = _free_bytes(target.parent)
        if free is not None and free < FULL_BELOW_BYTES:  # else a quota, or out of inodes
            reason += f" ({_size(free)} free)"
    return code, reason, advice


def _file_system_state(directory: Path) -> int | None:
    """`EROFS` for a read-only file system, `ENOSPC` for a (nearly) full one, else None."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    statvfs = getattr(os, "statvfs", None)
    if statvfs is not None:
        try:
            if statvfs(directory).f_flag & getattr(os, "ST_RDONLY", 1):
                return errno.EROFS
        except OSError:
            pass
    free = _free_bytes(directory)
    return errno.ENOSPC if free is not None and free < FULL_BELOW_BYTES else None


def _free_bytes(directory: Path) -> int | None:
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    exponent = min(3, (n.bit_length() - 1) // 10)
    return f"{n / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


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


def process_exists(pid: int) -> bool:
    """Whether process `pid` runs on this machine (assumed so where we cannot tell)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows
        return _windowsprocess_exists(pid)
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def _windowsprocess_exists(pid: int) -> bool:
    import ctypes

    kernel32 = getattr(ctypes, "windll").kernel32  # noqa: B009  (absent off Windows)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return bool(kernel32.GetLastError() == 5)  # ERROR_ACCESS_DENIED: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
