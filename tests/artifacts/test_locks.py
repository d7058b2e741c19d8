"""One run at a time owns an output, and a write that fails says why in one line.

`hooklens train`, `fit-jlens` and `eval` take `hooklens.artifacts.output_lock` before the
model loads: a second run into the same output stops at once naming the owner, a lock
left by a killed run is reported and taken over, and nothing of the lock stays behind.
A write onto a full or read-only disk raises `OutputWriteError` naming the real target,
keeps the earlier file and removes its temporary.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hooklens.artifacts import (
    StagedWrites,
    StaleLockWarning,
    atomic,
    atomic_write,
    atomic_write_text,
    lock_file,
    locks,
    output_lock,
    read_lock,
)
from hooklens.cli import main as cli_main
from hooklens.cli import train as training
from hooklens.core import distributed
from hooklens.errors import HooklensError, OutputLockedError, OutputWriteError
from tests.conftest import VOCAB
from tests.tiny import tiny_hf as _tiny_hf

ROOT = Path(__file__).resolve().parents[2]
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
TORCH_READ_ONLY = (
    "[enforce fail at inline_container.cc:747] . open file failed with strerror: "
    "Read-only file system"
)


def _dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def _left_lock(output: Path, pid: int, host: str | None = None) -> Path:
    """A lock file as a run killed while it owned `output` leaves it."""
    lock = lock_file(output)
    record = {"pid": pid, "host": host or socket.gethostname(), "command": "hooklens train"}
    lock.write_text(json.dumps(record | {"since": "2024-05-01 10:00:00"}) + "\n")
    return lock


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- the lock ---------------------------------------------------------------------------


def test_the_lock_file_records_the_owner_and_goes_when_the_run_ends(tmp_path):
    output = tmp_path / "deep" / "er" / "run"
    with output_lock(output, "hooklens train"):
        lock = tmp_path / "deep" / "er" / ".run.lock"
        assert lock_file(output) == lock and lock.is_file()
        record = json.loads(lock.read_text())
        assert record["pid"] == os.getpid()
        assert record["host"] == socket.gethostname()
        assert record["command"] == "hooklens train"
        assert time.strptime(record["since"], "%Y-%m-%d %H:%M:%S")
        assert read_lock(output) == record
        assert not output.exists()  # beside the output: a run's directory is not touched
    assert not (tmp_path / "deep").exists()  # the folders made for the lock go with it
    assert read_lock(output) is None


def test_a_second_owner_is_refused_with_who_owns_it_and_what_to_do(tmp_path):
    output = tmp_path / "run"
    with output_lock(output, "hooklens train"):
        with pytest.raises(OutputLockedError) as refused, output_lock(output, "hooklens eval"):
            pass
        assert lock_file(output).is_file()  # the refused run leaves the owner's lock be
    message = str(refused.value)
    assert message.startswith(f"{output} is in use by another run: process {os.getpid()} on ")
    assert f"on {socket.gethostname()} (hooklens train, since " in message
    assert f"holds its lock {lock_file(output)}" in message
    assert message.endswith("wait for that run to end, or choose another output")
    assert isinstance(refused.value, HooklensError) and isinstance(refused.value, RuntimeError)
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("interruption", [ValueError("bad"), KeyboardInterrupt()])
def test_the_lock_is_released_after_an_error_or_an_interrupt(tmp_path, interruption):
    output = tmp_path / "run"
    with pytest.raises(type(interruption)), output_lock(output, "hooklens train"):
        raise interruption
    assert _hidden(tmp_path) == []
    with output_lock(output, "hooklens train"):  # and can be taken again
        pass


def test_a_lock_left_by_a_dead_process_is_reported_and_taken_over(tmp_path):
    output = tmp_path / "run"
    pid = _dead_pid()
    _left_lock(output, pid)
    with pytest.warns(StaleLockWarning) as caught, output_lock(output, "hooklens train"):
        assert read_lock(output)["pid"] == os.getpid()
    (warning,) = caught
    message = str(warning.message)
    assert f"was left by process {pid} on {socket.gethostname()} (hooklens train" in message
    assert "ended without releasing it: taking it over for" in message
    assert _hidden(tmp_path) == []


def test_a_lock_of_a_sigkilled_run_is_taken_over(tmp_path):
    """The kernel releases a killed process's flock; its file and record stay behind."""
    output = tmp_path / "run"
    killed = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_DIE, str(output)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert killed.wait() == -signal.SIGKILL
    left = read_lock(output)
    assert left is not None and (left["pid"], left["command"]) == (killed.pid, "x")
    reports: list[str] = []
    with output_lock(output, "hooklens train", on_stale=reports.append):
        pass
    assert len(reports) == 1 and f"left by process {killed.pid} on" in reports[0]
    assert _hidden(tmp_path) == []


_HOLD_AND_DIE = """
import os, signal, sys
from hooklens.artifacts import output_lock
output_lock(sys.argv[1], "x").__enter__()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_lock_taken_on_another_host_is_refused_not_taken_over(tmp_path):
    output = tmp_path / "run"
    lock = _left_lock(output, 4242, host="elsewhere-node-7")
    with pytest.raises(OutputLockedError) as refused, output_lock(output, "hooklens train"):
        pass
    message = str(refused.value)
    assert "process 4242 on elsewhere-node-7 (hooklens train" in message
    assert f"if that run has ended, remove {lock} and start again" in message
    assert lock.is_file()  # not ours to remove


def test_an_unreadable_lock_file_nobody_holds_is_reported_and_taken_over(tmp_path):
    output = tmp_path / "run"
    lock_file(output).write_text("garbage\n")
    reports: list[str] = []
    with output_lock(output, "hooklens train", on_stale=reports.append):
        assert read_lock(output)["pid"] == os.getpid()
    assert reports == [f"{lock_file(output)} holds no owner's record: taking it over for {output}"]


def test_a_lock_file_removed_while_being_taken_is_taken_afresh(tmp_path, monkeypatch):
    """The owner before us releases (unlinks) the file between our open and our flock: a
    lock on the removed file would guard nothing, so the lock starts again."""
    import fcntl

    output = tmp_path / "run"
    calls = []

    class Racing:
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        @staticmethod
        def flock(fd, operation):
            calls.append(fd)
            if len(calls) == 1:
                os.unlink(lock_file(output))
            fcntl.flock(fd, operation)

    monkeypatch.setattr(locks, "fcntl", Racing)
    with output_lock(output, "hooklens train"):
        assert len(calls) == 2
        assert read_lock(output)["pid"] == os.getpid()  # in the file at the path
        with pytest.raises(OutputLockedError):  # and it excludes the next run
            monkeypatch.setattr(locks, "fcntl", fcntl)
            with output_lock(output, "hooklens eval"):
                pass
    assert _hidden(tmp_path) == []


def test_without_flock_a_live_owner_is_refused_and_a_dead_one_taken_over(tmp_path, monkeypatch):
    """Windows: the lock file is created with O_EXCL and its pid is checked."""
    monkeypatch.setattr(locks, "fcntl", None)
    output = tmp_path / "run"
    with output_lock(output, "hooklens train"):
        refused = pytest.raises(OutputLockedError, match=f"process {os.getpid()} on")
        with refused, output_lock(output, "hooklens eval"):
            pass
    assert _hidden(tmp_path) == []
    pid = _dead_pid()
    _left_lock(output, pid)
    warned = pytest.warns(StaleLockWarning, match=f"left by process {pid} on")
    with warned, output_lock(output, "hooklens train"):
        assert read_lock(output)["pid"] == os.getpid()
    assert _hidden(tmp_path) == []
    _left_lock(output, os.getpid() + 10**6, host="elsewhere")
    refused = pytest.raises(OutputLockedError, match=r"which this machine .* cannot check")
    with refused, output_lock(output, "hooklens train"):
        pass


def test_a_lock_on_a_read_only_file_system_says_so_before_anything_runs(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OutputWriteError) as refused, output_lock(tmp_path / "run", "train"):
        pass
    assert str(refused.value) == (
        f"could not create {tmp_path / '.run.lock'}, the lock file of {tmp_path / 'run'}: "
        "the file system is read-only; nothing was written: write to a writable place"
    )
    assert refused.value.errno == errno.EROFS


def test_only_rank_0_takes_the_lock_and_every_rank_learns_its_refusal(tmp_path, monkeypatch):
    output = tmp_path / "run"
    monkeypatch.setenv("RANK", "1")  # under torchrun, before the process group is joined
    with training.owned_output([output], "hooklens fit-jlens"):
        assert read_lock(output) is None
    monkeypatch.delenv("RANK")
    # In a process group: rank 1 raises rank 0's refusal (broadcast), and takes no lock.
    refusal = OutputLockedError(f"{output} is in use by another run: ...")
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "is_primary", lambda: False)
    monkeypatch.setattr(distributed, "broadcast_object", lambda value: refusal)
    refused = pytest.raises(OutputLockedError, match="is in use by another run")
    with refused, training.owned_output([output], "hooklens train"):
        raise AssertionError("rank 1 went on after rank 0 was refused")
    assert _hidden(tmp_path) == []
    # Rank 0, refused itself, tells the others before it raises.
    sent = []
    monkeypatch.setattr(distributed, "is_primary", lambda: True)
    monkeypatch.setattr(distributed, "broadcast_object", lambda value: sent.append(value) or value)
    with (
        output_lock(output, "hooklens train"),
        pytest.raises(OutputLockedError),
        training.owned_output([output], "hooklens train"),
    ):
        pass
    assert len(sent) == 1 and isinstance(sent[0], OutputLockedError)


# --- failed writes ------------------------------------------------------------------------


def _old_file(tmp_path: Path, name: str = "state.pt") -> Path:
    target = tmp_path / name
    atomic_write_text(target, "the earlier state")
    return target


def _unchanged(target: Path) -> None:
    assert target.read_text() == "the earlier state"
    assert _hidden(target.parent) == []  # the temporary is gone


def test_a_full_disk_is_one_line_naming_the_target_and_keeping_the_old_file(tmp_path):
    target = _old_file(tmp_path)

    def full(tmp):
        Path(tmp).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputWriteError) as failed:
        atomic_write(target, full)
    message = str(failed.value)
    assert message.startswith(f"could not write {target}: the disk is full; ")
    assert message.endswith(
        "the earlier state.pt is kept: free some space there, or write elsewhere"
    )
    assert "\n" not in message and ".tmp" not in message  # the real target, not the temporary
    assert failed.value.errno == errno.ENOSPC and isinstance(failed.value, OSError)
    _unchanged(target)


def test_torch_saves_unexpected_pos_on_a_full_disk_is_said_to_be_a_full_disk(tmp_path, monkeypatch):
    target = _old_file(tmp_path)

    def torch_on_a_full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK")
        raise RuntimeError(TORCH_FULL)

    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    monkeypatch.setattr(atomic, "_free_bytes", lambda directory: 0)  # what statvfs says then
    with pytest.raises(OutputWriteError, match=r"the disk is full \(0 bytes free\); the earlier"):
        atomic_write(target, lambda tmp: torch.save({}, tmp))
    _unchanged(target)
    # The same error with space to spare: still one line, torch's words in it.
    monkeypatch.setattr(atomic, "_free_bytes", lambda directory: 10 * 2**30)
    with pytest.raises(OutputWriteError, match=r"the write failed \(\[enforce fail"):
        atomic_write(target, lambda tmp: torch.save({}, tmp))
    _unchanged(target)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError(TORCH_READ_ONLY), "the file system is read-only"),
        (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (
            type("SafetensorError", (Exception,), {})(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            ),
            "the disk is full",
        ),
    ],
)
def test_each_writer_failure_names_its_cause(tmp_path, error, reason):
    target = _old_file(tmp_path)

    def failing(tmp):
        raise error

    with pytest.raises(OutputWriteError, match=f"could not write .*state.pt: {reason}"):
        atomic_write(target, failing)
    _unchanged(target)


def test_a_read_only_directory_is_said_and_nothing_is_made(tmp_path, monkeypatch):
    target = tmp_path / "new" / "lens" / "params.safetensors"

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(OutputWriteError) as failed:
        atomic_write_text(target, "x")
    assert str(failed.value) == (
        f"could not write {target}: the file system is read-only; nothing was written "
        "there: write to a writable place"
    )


def test_a_temporary_that_cannot_be_created_is_said_with_the_target(tmp_path, monkeypatch):
    target = _old_file(tmp_path)
    real_open = os.open

    def no_create(path, flags, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_create)
    with pytest.raises(OutputWriteError, match=f"could not write {target}: permission denied"):
        atomic_write_text(target, "new")
    _unchanged(target)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_directory_without_write_permission_is_said(tmp_path):
    target = _old_file(tmp_path)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(OutputWriteError, match=r"permission denied; the earlier state\.pt"):
            atomic_write_text(target, "new")
    finally:
        tmp_path.chmod(0o755)
    _unchanged(target)


def test_staged_writes_failing_on_the_second_file_replace_neither(tmp_path):
    first, second = _old_file(tmp_path, "a.json"), _old_file(tmp_path, "b.json")

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with (
        pytest.raises(OutputWriteError, match=r"b\.json: the disk is full"),
        StagedWrites() as staged,
    ):
        staged.stage(first, lambda tmp: Path(tmp).write_text("new"))
        staged.stage(second, full)
    _unchanged(first)
    _unchanged(second)


def test_errors_that_are_not_the_disks_pass_through_unchanged(tmp_path):
    target = _old_file(tmp_path)
    for error in (ValueError("a bug"), RuntimeError("shapes cannot be multiplied")):

        def failing(tmp, error=error):
            raise error

        with pytest.raises(type(error)) as raised:
            atomic_write(target, failing)
        assert raised.value is error
    missing = FileNotFoundError(errno.ENOENT, "No such file", "elsewhere.bin")

    def copies_a_missing_file(tmp):
        raise missing

    with pytest.raises(FileNotFoundError) as raised:
        atomic_write(target, copies_a_missing_file)
    assert raised.value is missing
    _unchanged(target)


# --- the commands -------------------------------------------------------------------------


def _write_texts(path: Path, seed: int = 0, n: int = 40) -> Path:
    generator = torch.Generator().manual_seed(seed)
    rows = [
        " ".join(f"w{i}" for i in torch.randint(4, VOCAB, (20,), generator=generator).tolist())
        for _ in range(n)
    ]
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    return path


def _train_arguments(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--output", str(output), "--model-class", "bridge",
        "--seq-len", "16", "--batch-size", "1", "--fast-fit-tokens", "0", "--steps", "2",
        "--checkpoint-every", "1", "--matmul-dtype", "float32", "--no-progress", *extra,
    ]  # fmt: skip


def _stderr_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_train_and_fit_jlens_into_an_owned_output_stop_before_the_model_loads(
    tmp_path, tiny_models, capsys
):
    data = _write_texts(tmp_path / "texts.jsonl")
    output = tmp_path / "run"
    with output_lock(output, "hooklens train"):
        assert cli_main(_train_arguments(data, output)) == 2
        err = _stderr_line(capsys)
        assert f"hooklens train: {output} is in use by another run: process {os.getpid()}" in err
        assert err.rstrip().endswith("wait for that run to end, or choose another --output")
        fit = ["fit-jlens", "--data", str(data), "--output", str(output), "--no-progress"]
        assert cli_main(fit) == 2
        assert f"hooklens fit-jlens: {output} is in use by another run" in _stderr_line(capsys)
    assert tiny_models == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.jsonl"]


def test_train_takes_over_a_killed_runs_lock_and_says_so(tmp_path, tiny_models, capsys):
    data = _write_texts(tmp_path / "texts.jsonl")
    output = tmp_path / "run"
    pid = _dead_pid()
    lock = _left_lock(output, pid)
    assert cli_main(_train_arguments(data, output)) == 0
    err = capsys.readouterr().err
    assert (
        f"hooklens train: {lock} was left by process {pid} on {socket.gethostname()} "
        "(hooklens train, since 2024-05-01 10:00:00), which ended without releasing it: "
        f"taking it over for {output}"
    ) in err
    assert not lock.exists()
    assert {p.name for p in output.iterdir()} == {"run.json", "checkpoint", "lens", "history.json"}


def test_train_on_a_full_disk_says_so_in_one_line(tmp_path, tiny_models, capsys, monkeypatch):
    data = _write_texts(tmp_path / "texts.jsonl")
    output = tmp_path / "run"

    def torch_on_a_full_disk(obj, path, *args, **kwargs):
        raise RuntimeError(TORCH_FULL)

    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    monkeypatch.setattr(atomic, "_free_bytes", lambda directory: 0)
    assert cli_main(_train_arguments(data, output)) == 2
    checkpoint = output / "checkpoint" / "checkpoint.pt"
    assert f"hooklens train: could not write {checkpoint}: the disk is full" in _stderr_line(capsys)
    assert not checkpoint.exists() and _hidden(tmp_path) == []


# Two real `hooklens train` processes into one --output.


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, word_tokenizer) -> Path:
    """A tiny random Llama saved like a hub model: `--model DIR --model-class bridge`."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    _tiny_hf("llama").save_pretrained(directory)
    word_tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_two_concurrent_train_runs_into_one_output_one_is_refused(tmp_path, tiny_model_dir):
    """Was: both exit 0, and the output ends with one run's run.json beside the other's
    lens and history. The second starts while the first provably owns the output (its
    lock records its pid), and the first is paused meanwhile, so the order is fixed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    output = tmp_path / "run"
    first_data = _write_texts(tmp_path / "first.jsonl", seed=0)
    second_data = _write_texts(tmp_path / "second.jsonl", seed=1)

    def command(data: Path, steps: str) -> list[str]:
        arguments = _train_arguments(data, output, "--model", str(tiny_model_dir))
        arguments[arguments.index("--steps") + 1] = steps
        return [sys.executable, "-m", "hooklens", *arguments]

    first = subprocess.Popen(
        command(first_data, "2"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while (read_lock(output) or {}).get("pid") != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # it holds the lock, and keeps it while paused
        second = subprocess.run(
            command(second_data, "3"), env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    assert second.returncode == 2, second.stderr
    (line,) = second.stderr.splitlines()
    assert line.startswith(f"hooklens train: {output} is in use by another run: process ")
    assert f"process {first.pid} on {socket.gethostname()} (hooklens train, since " in line
    # One run in the output: the first one's settings, history and lens.
    run = json.loads((output / "run.json").read_text())
    assert run["data"] == str(first_data) and run["config"]["steps"] == 2
    history = json.loads((output / "history.json").read_text())
    assert [record["step"] for record in history["steps"]] == [1, 2]
    assert (output / "lens" / "params.safetensors").is_file()
    checkpoint = torch.load(output / "checkpoint" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 2
    assert _hidden(tmp_path) == []  # the lock went with the first run
