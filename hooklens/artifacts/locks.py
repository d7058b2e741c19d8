"""Output locks: one run owns its outputs while it runs.

`output_lock(paths, command)` makes a command the one owner of its outputs while it runs:
a lock file beside each output (`.{name}.lock`) records the owner's pid, host, command and
start time, and a second run is refused at once with `OutputLockedError` naming them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from hooklens.artifacts.atomic import STALE_AFTER_S, process_exists, write_failure
from hooklens.errors import OutputLockedError, OutputWriteError, StaleLockWarning, warn

try:
    import fcntl
except ImportError:  # Windows: the lock falls back to O_EXCL creation and a pid check
    fcntl = None  # type: ignore[assignment]

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
            cause = write_failure(lock, error)
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
        elif not held and process_exists(int(owner.get("pid", 0))):
            raise self._locked(lock, owner)
        else:
            said = f"{lock} was left by {_describe(owner)}, which ended without releasing it"
        message = f"{said}: taking it over for {self.outputs[lock]}"
        if self.on_stale is None:
            warn(StaleLockWarning(message))
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
        >>> with output_lock("runs/tiny", "hooklens train"):
        ...     lens.save("runs/tiny")
        ...     with output_lock("runs/tiny", "hooklens train"):  # a second run: refused
        ...         pass
        Traceback (most recent call last):
        ...
        hooklens.errors.OutputLockedError: runs/tiny is in use by another run: process ...
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
