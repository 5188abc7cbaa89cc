"""The run-folder lock: one holder at a time, named when it refuses another, gone when its process dies.

Other holders are real processes (forked, so they do not import torch again), killed with SIGKILL where
the point is what the kernel does."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import time

import pytest

from converge.errors import ConvergeError
from converge.io import lock as lk
from converge.io.lock import LOCK_FILE, FolderLock, holder, lock_folder

_FORK = multiprocessing.get_context("fork")


def _hold(folder, ready, done, shared=False, command="converge train task.py --out run", child_pid_file=None):
    """In a child process: take the lock, say so, wait to be told (or killed)."""
    lock = lock_folder(folder, shared=shared, command=command)
    if child_pid_file is not None:  # a grandchild that outlives us (as torchrun's ranks could)
        child = subprocess.Popen(["sleep", "60"])
        child_pid_file.write_text(str(child.pid))
    ready.set()
    done.wait(60)
    lock.release()


class _Holder:
    """A process holding ``folder``'s lock until stop() or kill()."""

    def __init__(self, folder, **kwargs):
        self.ready, self.done = _FORK.Event(), _FORK.Event()
        self.process = _FORK.Process(target=_hold, args=(folder, self.ready, self.done), kwargs=kwargs)
        self.process.start()
        assert self.ready.wait(30), "the holder never took the lock"

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        self.done.set()
        self.process.join(30)

    def kill(self):
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(30)


@pytest.fixture
def held(tmp_path):
    started = []

    def start(**kwargs):
        started.append(_Holder(tmp_path, **kwargs))
        return started[-1]

    yield start
    for one in started:
        if one.process.is_alive():
            one.kill()


def test_a_second_process_is_refused_with_one_line_naming_the_holder(tmp_path, held):
    other = held(command="converge resume runs/x")
    with pytest.raises(ConvergeError) as refused:
        lock_folder(tmp_path)
    message = str(refused.value)
    assert "\n" not in message
    assert f"run folder {str(tmp_path)!r} is in use by process {other.pid} (converge resume runs/x)" in message
    assert f"on {socket.gethostname()} since " in message


def test_a_process_may_take_its_own_folder_again_and_gives_it_back_with_the_last_release(tmp_path, held):
    first = lock_folder(tmp_path)
    again = FolderLock(tmp_path).acquire()  # resume opens the folder, a run that starts over creates it again
    assert again._fd == first._fd
    first.release()
    assert holder(tmp_path) is not None and holder(tmp_path).is_self  # still held: one taker left
    again.release()
    assert holder(tmp_path) is None
    other = held()
    with pytest.raises(ConvergeError, match=f"in use by process {other.pid}"):
        lock_folder(tmp_path)


def test_a_shared_hold_in_this_process_is_not_turned_into_an_exclusive_one(tmp_path):
    shared = lock_folder(tmp_path, shared=True)
    with pytest.raises(ConvergeError, match="in use by this process"):
        lock_folder(tmp_path)
    lock_folder(tmp_path, shared=True).release()
    shared.release()
    lock_folder(tmp_path).release()


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path):
    """A DataLoader worker forked while the lock is held: the lock still ends with the parent."""
    ready, done = _FORK.Event(), _FORK.Event()

    def parent_with_child():
        lock_folder(tmp_path)
        child = _FORK.Process(target=done.wait, args=(60,))  # forked while holding
        child.start()
        ready.set()
        child.join(60)

    parent = _FORK.Process(target=parent_with_child)
    parent.start()
    assert ready.wait(30)
    assert holder(tmp_path) is not None
    os.kill(parent.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while parent.exitcode is None and time.monotonic() < deadline:  # not join(): the grandchild keeps its pipe
        time.sleep(0.01)
    try:
        assert holder(tmp_path) is None  # the grandchild still runs, yet holds nothing
        lock_folder(tmp_path).release()
    finally:
        done.set()


def test_sigkill_releases_the_lock_at_once(tmp_path, held):
    other = held()
    assert holder(tmp_path).pid == other.pid
    other.kill()
    assert holder(tmp_path) is None  # the file stays, with the dead holder's details, but nobody holds it
    with lock_folder(tmp_path) as mine:
        assert mine.held and holder(tmp_path).pid == os.getpid()


def test_a_child_the_holder_started_does_not_keep_the_lock(tmp_path, held):
    """The descriptor is not inherited across exec: a grandchild alive after its parent's death holds nothing."""
    pid_file = tmp_path / "child.pid"
    other = held(child_pid_file=pid_file)
    child = int(pid_file.read_text())
    other.kill()
    try:
        os.kill(child, 0)  # still alive
        lock_folder(tmp_path).release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_release_and_context_manager(tmp_path):
    with FolderLock(tmp_path) as lock:
        assert lock.held
        details = json.loads((tmp_path / LOCK_FILE).read_text())
        assert details["pid"] == os.getpid() and details["host"] == socket.gethostname()
    assert not lock.held and holder(tmp_path) is None
    assert (tmp_path / LOCK_FILE).read_bytes() == b""  # nothing misleading left behind
    again = lock_folder(tmp_path)
    again.release()
    again.release()  # twice is harmless


def test_a_refused_command_can_leave_the_folder_as_it_found_it(tmp_path):
    """release(remove=lock.created): a user's folder gets no lock file from a command that did nothing."""
    (tmp_path / "notes.txt").write_text("mine\n")
    lock = lock_folder(tmp_path)
    assert lock.created
    lock.release(remove=lock.created)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    lock_folder(tmp_path).release()  # made again when needed
    again = lock_folder(tmp_path)
    assert not again.created  # the file was there already: not this acquire's to remove
    again.release(remove=again.created)
    assert (tmp_path / LOCK_FILE).exists()


def test_holder_reads_without_taking_the_lock(tmp_path, held):
    assert holder(tmp_path / "nowhere") is None
    assert holder(tmp_path) is None  # no lock file yet
    other = held(command="converge train t.py")
    found = holder(tmp_path)
    assert found.pid == other.pid and found.command == "converge train t.py" and not found.is_self
    assert "process" in found.describe() and "converge train t.py" in found.describe()
    assert holder(tmp_path).pid == other.pid  # asking twice changes nothing
    other.stop()
    assert holder(tmp_path) is None
    mine = lock_folder(tmp_path)
    assert holder(tmp_path).is_self
    mine.release()


def test_a_probe_by_holder_does_not_make_an_acquirer_fail(tmp_path):
    """holder() tests the lock for an instant; an acquirer at that instant retries instead of refusing."""
    stop = _FORK.Event()

    def probe_forever():
        while not stop.is_set():
            holder(tmp_path)

    (tmp_path / LOCK_FILE).touch()
    prober = _FORK.Process(target=probe_forever)
    prober.start()
    try:
        for _ in range(50):
            lock_folder(tmp_path).release()
    finally:
        stop.set()
        prober.join(10)


def test_shared_holders_coexist_and_exclude_an_exclusive_one(tmp_path, held):
    first = held(shared=True, command="converge tune a.py --out t")
    second = lock_folder(tmp_path, shared=True, command="converge tune a.py --out t")
    second.release()
    with pytest.raises(ConvergeError, match="in use by process .*converge tune a.py --out t"):
        lock_folder(tmp_path)
    first.stop()
    exclusive = lock_folder(tmp_path)
    assert _try_elsewhere(tmp_path, shared=True) == "refused"
    exclusive.release()
    assert _try_elsewhere(tmp_path, shared=True) == "locked"


def _try_elsewhere(folder, shared=False) -> str:
    """Try the lock in another process: 'locked' or 'refused'."""
    answer = _FORK.Queue()

    def attempt():
        try:
            lock_folder(folder, shared=shared)
            answer.put("locked")
        except ConvergeError:
            answer.put("refused")

    process = _FORK.Process(target=attempt)
    process.start()
    result = answer.get(timeout=30)
    process.join(30)
    return result


def test_racing_processes_get_exactly_one_lock(tmp_path):
    """Many processes started together: one takes the lock, every other is refused (no check-then-create)."""
    go, results = _FORK.Event(), _FORK.Queue()

    def race(n):
        go.wait(10)
        try:
            lock = lock_folder(tmp_path)
        except ConvergeError:
            results.put("refused")
            return
        results.put("locked")
        time.sleep(1.0)
        lock.release()

    racers = [_FORK.Process(target=race, args=(n,)) for n in range(6)]
    for racer in racers:
        racer.start()
    go.set()
    outcomes = sorted(results.get(timeout=30) for _ in racers)
    for racer in racers:
        racer.join(30)
    assert outcomes == ["locked"] + ["refused"] * 5


def test_a_lock_file_replaced_under_a_waiting_acquirer_is_not_trusted(tmp_path, monkeypatch):
    """A folder deleted and made again between open and flock: the acquirer locks the file now at the path."""
    real_flock, replaced = lk._flock, []

    def flock_then_replace(fd, operation, **kwargs):
        ok = real_flock(fd, operation, **kwargs)
        if not replaced:
            replaced.append(True)
            os.unlink(tmp_path / LOCK_FILE)
            (tmp_path / LOCK_FILE).touch()
        return ok

    monkeypatch.setattr(lk, "_flock", flock_then_replace)
    lock = lock_folder(tmp_path)
    assert os.path.samestat(os.fstat(lock._fd), os.stat(tmp_path / LOCK_FILE))
    lock.release()


def test_missing_or_unwritable_folder_is_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(ConvergeError, match="does not exist"):
        lock_folder(tmp_path / "nowhere")
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(LOCK_FILE):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args)

    monkeypatch.setattr(lk.os, "open", read_only)
    with pytest.raises(ConvergeError, match="cannot be written: Read-only file system"):
        lock_folder(tmp_path)


def test_the_command_is_written_without_passwords(tmp_path):
    command = ("converge tune t.py --storage postgresql+psycopg://tuner:S3cret@db:5432/s "
               "--other mysql://u@h/db?password=hunter2")
    with lock_folder(tmp_path, command=command):
        text = (tmp_path / LOCK_FILE).read_text()
    assert "S3cret" not in text and "hunter2" not in text
    assert "postgresql+psycopg://tuner:***@db:5432/s" in text and "password=***" in text
    assert lk.scrub_command("x" * 400).endswith("...") and len(lk.scrub_command("x" * 400)) == 300


def test_current_command_reads_like_the_command_typed(monkeypatch):
    monkeypatch.setattr(lk.sys, "argv", ["/venv/lib/python3/site-packages/converge/__main__.py", "resume",
                                         "runs/my run"])
    assert lk.current_command() == "converge resume 'runs/my run'"


def test_a_child_given_child_env_works_under_its_parents_lock(tmp_path, monkeypatch):
    """torchrun ranks started by the holder: the child's acquire succeeds without a second lock."""
    parent = lock_folder(tmp_path)
    env = parent.child_env()
    monkeypatch.setenv(lk.INHERIT_ENV, env[lk.INHERIT_ENV])
    child = FolderLock(tmp_path).acquire()
    assert child.held
    child.release()
    assert holder(tmp_path).is_self  # the parent still holds it
    parent.release()
    with pytest.raises(RuntimeError):
        parent.child_env()
    # once the parent let go, the inherited claim is worth nothing: a real lock is taken instead
    other = FolderLock(tmp_path).acquire()
    assert other._fd is not None
    other.release()
