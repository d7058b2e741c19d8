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

`output_lock(paths, command)` makes a command the one owner of its outputs while it runs:
a lock file beside each output (`.{name}.lock`) records the owner's pid, host, command and
start time, and a second run is refused at once with `OutputLockedError` naming them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from hooklens.errors import HooklensError, OutputLockedError, OutputWriteError

try:
    import fcntl
except ImportError:  # Windows: the lock falls back to O_EXCL creation and a pid check
    fcntl = None  # type: ignore[assignment]

STALE_AFTER_S = 60.0
FULL_BELOW_BYTES = 1 << 20
"""A failed write with less free space than this left on its file system ran out of it."""


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
        if age < STALE_AFTER_S or (pid is not None and _process_exists(int(pid))):
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
    cause = _write_failure(Path(target), error)
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


def _write_failure(target: Path, error: BaseException) -> tuple[int | None, str, str] | None:
    """`(errno, reason, advice)` for an error that is the disk's doing, else `None`."""
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


# --- output locks ---------------------------------------------------------------------------


class StaleLockWarning(UserWarning):
    """A lock file left by a run that ended without releasing it was taken over."""


LOCK_ADVICE = "wait for that run to end, or choose another output"


def lock_file(path: str | os.PathLike) -> Path:
    """The lock file of output `path`: `.{name}.lock` beside it (a run's directory is not
    touched, so the lock never counts as part of the run)."""
    path = Path(path).resolve()
    return path.with_name(f".{path.name or 'root'}.lock")


class OutputLock:
    """Ownership of some outputs for one run: enter to take it, leave to release it.

    Made by `output_lock`. Taking it fails at once with `OutputLockedError` when another
    live run owns one of the outputs. Leaving the `with` block, normally, by an error or
    by `KeyboardInterrupt`, removes the lock files (and the folders made for them).
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike],
        command: str,
        *,
        advice: str = LOCK_ADVICE,
        on_stale: Callable[[str], object] | None = None,
    ) -> None:
        self.outputs = {lock_file(p): Path(p) for p in paths}
        self.command = command
        self.advice = advice
        self.on_stale = on_stale
        self._held: list[_HeldLock] = []
        self._made: list[Path] = []

    def __enter__(self) -> OutputLock:
        try:
            for lock in sorted(self.outputs):
                self._made += _make_directories(lock.parent)
                self._held.append(self._take(lock))
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock files this run holds (and the folders made for them, if empty)."""
        while self._held:
            self._held.pop().release()
        while self._made:
            with contextlib.suppress(OSError):  # not empty: the run wrote its output there
                self._made.pop().rmdir()

    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "argv": sys.argv,
            "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
            "started": now,
            "token": secrets.token_hex(8),
        }

    def _take(self, lock: Path) -> _HeldLock:
        try:
            if fcntl is not None:
                return self._take_with_flock(lock)
            return self._take_exclusive(lock)
        except OSError as error:
            cause = _write_failure(lock, error)
            if cause is None:
                raise
            failure = OutputWriteError(
                f"could not create {lock}, the lock file of {self.outputs[lock]}: {cause[1]}; "
                f"nothing was written: {cause[2]}"
            )
            failure.errno = cause[0]  # type: ignore[misc]
            failure.filename = str(lock)  # type: ignore[misc]
            raise failure from error

    def _take_with_flock(self, lock: Path) -> _HeldLock:
        # flock: the kernel releases the lock of a process that dies, SIGKILL included, so
        # a lock file nobody holds was left by a run that ended without removing it.
        assert fcntl is not None
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise self._locked(lock, _read_owner(lock, wait=True)) from None
            # The owner before us may have removed the file after we opened it (releasing
            # is unlink, then unlock): a lock on a removed file guards nothing, start again.
            if not _same_file(fd, lock):
                os.close(fd)
                continue
            break
        wrote = False
        try:
            left = _read_fd(fd)
            if left.strip():  # empty: made just now (or by a run killed before it wrote)
                self._take_over(lock, _parse_owner(left), held=True)
            record = self._record()
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            wrote = True
            os.write(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
        except BaseException:
            if wrote:  # interrupted (KeyboardInterrupt) once the file was ours
                with contextlib.suppress(OSError):
                    if _same_file(fd, lock):
                        lock.unlink()
            os.close(fd)  # else the file stays, with the record of the run that left it
            raise
        return _HeldLock(lock, fd, record["token"])

    def _take_exclusive(self, lock: Path) -> _HeldLock:
        # Without flock (Windows): creating the file is taking the lock; a file whose
        # process is gone from this machine is stale.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        while True:
            try:
                fd = os.open(lock, flags, 0o666)
            except FileExistsError:
                owner = _read_owner(lock, wait=True)
                if owner is None and not lock.exists():
                    continue  # released meanwhile
                self._take_over(lock, owner, held=False)
                with contextlib.suppress(FileNotFoundError):
                    if _read_owner(lock) == owner:  # not replaced meanwhile by a new owner
                        lock.unlink()
                continue
            record = self._record()
            try:
                os.write(fd, (json.dumps(record) + "\n").encode())
            finally:
                os.close(fd)
            return _HeldLock(lock, None, record["token"])

    def _take_over(self, lock: Path, owner: dict[str, Any] | None, *, held: bool) -> None:
        """Report a lock left by a run that ended, or refuse one that may still run."""
        here = socket.gethostname()
        if owner is None:  # no readable record: a run killed while writing it, or not ours
            age = _age(lock)
            if not held and (age is None or age < STALE_AFTER_S):
                raise self._locked(lock, None)
            said = f"{lock} holds no owner's record"
        elif owner.get("host") != here:
            raise OutputLockedError(
                f"{self.outputs[lock]} may be in use: its lock {lock} was taken by "
                f"{_describe(owner)}, which this machine ({here}) cannot check; if that run "
                f"has ended, remove {lock} and start again, or choose another output"
            )
        elif not held and _process_exists(int(owner.get("pid", 0))):
            raise self._locked(lock, owner)
        else:
            said = f"{lock} was left by {_describe(owner)}, which ended without releasing it"
        message = f"{said}: taking it over for {self.outputs[lock]}"
        if self.on_stale is None:
            warnings.warn(StaleLockWarning(message), stacklevel=5)
        else:
            self.on_stale(message)

    def _locked(self, lock: Path, owner: dict[str, Any] | None) -> OutputLockedError:
        who = _describe(owner) if owner is not None else "a run that is just starting"
        return OutputLockedError(
            f"{self.outputs[lock]} is in use by another run: {who} holds its lock {lock}; "
            f"{self.advice}"
        )


def output_lock(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    command: str,
    *,
    advice: str = LOCK_ADVICE,
    on_stale: Callable[[str], object] | None = None,
) -> OutputLock:
    """Own the output(s) `paths` for one run of `command`: use it as a `with` block.

    Each output gets a lock file beside it (`lock_file`): JSON with the owner's pid, host,
    command, argv and start time. A second run that asks for any of them fails at once
    with `OutputLockedError`, naming the owner and `advice`. On POSIX the file is locked
    with `flock`, which the kernel releases when its process dies however it dies; a lock
    file left by such a run is taken over after `on_stale` (default: a `StaleLockWarning`)
    is told, never silently. A lock taken on another host is refused: this machine cannot
    tell whether that run still lives. Without `fcntl` (Windows) the lock file is created
    with `O_EXCL` and is stale when its process no longer runs here.

    Examples:
        >>> with output_lock("runs/smollm2", "hooklens train"):   # doctest: +SKIP
        ...     train_into("runs/smollm2")
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return OutputLock(paths, command, advice=advice, on_stale=on_stale)


def read_lock(path: str | os.PathLike) -> dict[str, Any] | None:
    """The owner recorded in the lock of output `path` (`None`: no lock, or no record)."""
    return _read_owner(lock_file(path))


class _HeldLock:
    def __init__(self, path: Path, fd: int | None, token: str) -> None:
        self.path, self.fd, self.token = path, fd, token

    def release(self) -> None:
        """Remove the file while still holding it, then unlock: a run waiting on the
        old file sees it removed and starts again on a new one."""
        try:
            if self.fd is not None:
                if _same_file(self.fd, self.path):
                    self.path.unlink()
            else:
                owner = _read_owner(self.path)
                if owner is not None and owner.get("token") == self.token:
                    self.path.unlink()
        except OSError:
            pass  # gone already, or a read-only disk: the next run finds it unheld
        finally:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def _make_directories(directory: Path) -> list[Path]:
    """Make `directory` and its missing parents; return those made, outermost first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    made = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another process made it: not ours to remove
        made.append(folder)
    return made


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_owner(data: bytes) -> dict[str, Any] | None:
    try:
        owner = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _read_owner(lock: Path, *, wait: bool = False) -> dict[str, Any] | None:
    """The record in `lock`; with `wait`, give a new owner a moment to write it."""
    for attempt in range(20 if wait else 1):
        try:
            owner = _parse_owner(lock.read_bytes())
        except OSError:
            owner = None
        if owner is not None or not wait:
            return owner
        time.sleep(0.025 * (attempt + 1))
    return None


def _age(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return None


def _describe(owner: dict[str, Any]) -> str:
    command = owner.get("command") or "an unknown command"
    since = owner.get("since") or "an unknown time"
    return f"process {owner.get('pid')} on {owner.get('host')} ({command}, since {since})"


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
    if os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows
        return _windows_process_exists(pid)
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def _windows_process_exists(pid: int) -> bool:
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
