"""One writer per run folder: an exclusive lock that the kernel drops when its process dies.

A command that writes a run folder (`converge train`, `train --force`, `resume`, a trial of `converge
tune`) holds ``FOLDER/.converge.lock`` locked with ``flock(LOCK_EX)`` for as long as it runs. A second
command meets the lock and stops at once with one line that names the holder::

    run folder 'runs/x' is in use by process 4242 (converge resume runs/x) on host-a since 2025-12-02 10:31:07

The lock belongs to an open file description, so it cannot outlive its process: SIGKILL, a crash or power
loss all release it, and no stale lock ever needs to be broken by hand. The file itself stays in the
folder (unlinking it would let two processes lock two different files); what it holds -- pid, host,
command, start time -- is information for people and for `converge report`, never what decides.

``holder(folder)`` says who holds a folder without taking it (`converge report` reads a live run and says
so). Linux and macOS (``fcntl``); on a network file system ``flock`` is only as good as the server's
locking.

Within one process the lock is counted, not exclusive: a process that holds a folder may take it again
(`resume` opens the folder, and a run that starts over creates it once more), and it is given back when
the last taker releases it. A forked child (a DataLoader worker) closes its copy of the descriptor at once,
so the lock still ends with the process that took it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converge.errors import ConvergeError

LOCK_FILE = ".converge.lock"
# A child process started by the holder (torchrun ranks) may use the folder under its parent's lock:
# the holder puts "<pid>:<folder>" here (FolderLock.child_env) and the child's acquire() succeeds.
INHERIT_ENV = "CONVERGE_FOLDER_LOCK"
_RETRY_SECONDS = 0.2   # holder() takes the lock for a moment to test it: ride over such a probe
_URL_PASSWORD = re.compile(r"(://[^/\s:@]+:)[^\s@]+@")
_QUERY_SECRET = re.compile(r"(?i)((?:password|passwd|pwd|sslpassword)=)[^&;#\s]*")


@dataclass
class _Taken:
    """A folder this process holds: the descriptor, its mode, how many takers share it."""

    fd: int
    shared: bool
    count: int = 1


_TAKEN: dict[str, _Taken] = {}   # realpath of the folder -> what this process holds
_TAKEN_LOCK = threading.Lock()


def _forget_in_child() -> None:
    """After fork: the child closes its copies (closing a copy never releases the parent's lock)."""
    for taken in _TAKEN.values():
        try:
            os.close(taken.fd)
        except OSError:
            pass
    _TAKEN.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@dataclass(frozen=True)
class Holder:
    """Who holds a folder's lock, as its lock file says (``pid`` None: not written yet, or unreadable)."""

    pid: int | None
    host: str = ""
    command: str = ""
    since: str = ""

    def describe(self) -> str:
        if self.pid is None:
            return "another process (it has not said which yet)"
        text = f"process {self.pid}"
        if self.command:
            text += f" ({self.command})"
        if self.host:
            text += f" on {self.host}"
        if self.since:
            text += f" since {self.since}"
        return text

    @property
    def is_self(self) -> bool:
        return self.pid == os.getpid() and self.host in ("", socket.gethostname())


class FolderLock:
    """The lock on ``folder/.converge.lock``. ``acquire()`` never waits for a holder: it raises a
    ConvergeError naming it. ``shared=True`` takes a shared lock instead: several holders at once (workers
    of one `converge tune` study), each refused to an exclusive acquirer, which is told the latest of them."""

    def __init__(self, folder: str | Path, *, shared: bool = False, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.shared = shared
        self.command = scrub_command(command if command is not None else current_command())
        self._fd: int | None = None
        self._inherited = False
        self.created = False   # this acquire made the lock file (release(remove=True) takes it away again)

    @property
    def held(self) -> bool:
        return self._fd is not None or self._inherited

    def acquire(self) -> "FolderLock":
        import fcntl

        if self.held:
            return self
        if self._take_again() or self._inherit():
            return self
        for _ in range(3):  # again when the file was replaced while we waited for it (see _same_file)
            fd = self._open()
            try:
                if not _flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB):
                    raise ConvergeError(self._in_use_message(_read_holder(fd)))
                if self._same_file(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        else:
            raise ConvergeError(f"run folder {str(self.folder)!r} cannot be locked: its {LOCK_FILE} keeps being "
                                f"replaced")
        self._fd = fd
        self._write_details()  # shared holders too: the last one to arrive is named
        with _TAKEN_LOCK:
            _TAKEN[self._key] = _Taken(fd, self.shared)
        return self

    def release(self, *, remove: bool = False) -> None:
        """Give the lock back (closing the descriptor releases it; a process that dies releases it too).
        Taken more than once in this process, it is given back with the last release. ``remove``: delete
        the lock file too (a command refused before it wrote anything leaves a user's folder as it found
        it: pass ``remove=lock.created``); safe, since an acquirer checks that the file it locked is still
        the one at the path."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with _TAKEN_LOCK:
                taken = _TAKEN.get(self._key)
                if taken is not None and taken.fd == fd and taken.count > 1:
                    taken.count -= 1
                    return
                _TAKEN.pop(self._key, None)
            try:
                if remove:
                    self.path.unlink(missing_ok=True)  # while still holding it
                elif not self.shared:
                    os.ftruncate(fd, 0)  # nobody holds it now: leave no details that could mislead
            except OSError:
                pass
            finally:
                os.close(fd)
        self._inherited = False

    def child_env(self) -> dict[str, str]:
        """Environment for a child process that works in this folder under this lock (torchrun ranks)."""
        if not self.held:
            raise RuntimeError("child_env() needs the lock held")
        return {INHERIT_ENV: f"{_holder_pid(self)}:{os.path.realpath(self.folder)}"}

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # --- the pieces ----------------------------------------------------------------------------------
    @property
    def _key(self) -> str:
        return os.path.realpath(self.folder)

    def _take_again(self) -> bool:
        """This process holds the folder already: count one more taker."""
        with _TAKEN_LOCK:
            taken = _TAKEN.get(self._key)
            if taken is None:
                return False
            if taken.shared and not self.shared:
                raise ConvergeError(f"run folder {str(self.folder)!r} is in use by this process (shared, as a "
                                    f"converge tune worker); it cannot also be written as a run folder")
            taken.count += 1
            self._fd = taken.fd
            return True

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                fd = os.open(self.path, flags | os.O_EXCL, 0o644)
                self.created = True
                return fd
            except FileExistsError:
                return os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise ConvergeError(f"run folder {str(self.folder)!r} does not exist") from None
            raise ConvergeError(f"run folder {str(self.folder)!r} cannot be written: "
                                f"{exc.strerror or exc}") from None

    def _same_file(self, fd: int) -> bool:
        """Still the file at our path? A folder deleted and made again under us holds a new one."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except OSError:
            return False

    def _write_details(self) -> None:
        details = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                   "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        data = (json.dumps(details) + "\n").encode("utf-8")
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only its details are missing

    def _inherit(self) -> bool:
        """A child of the holder (its parent passed child_env()) works under its parent's lock."""
        value = os.environ.get(INHERIT_ENV, "")
        pid, _, folder = value.partition(":")
        if not value or folder != os.path.realpath(self.folder):
            return False
        found = holder(self.folder)
        if found is None or str(found.pid) != pid:
            return False
        self._inherited = True
        return True

    def _in_use_message(self, found: Holder) -> str:
        return (f"run folder {str(self.folder)!r} is in use by {found.describe()}; wait for it to finish or "
                f"stop it first")


def lock_folder(folder: str | Path, *, shared: bool = False, command: str | None = None) -> FolderLock:
    """Take ``folder``'s lock (see FolderLock) and return it; the caller releases it, or its process ends."""
    return FolderLock(folder, shared=shared, command=command).acquire()


def holder(folder: str | Path) -> Holder | None:
    """Who holds ``folder``'s lock now, or None. Takes nothing that a holder needs: it tests the lock for
    an instant (an acquirer retries for 0.2 s to ride over this). A holder in this very process is
    reported too (``Holder.is_self``)."""
    import fcntl

    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None  # no lock file: never locked (or not a run folder)
    try:
        if _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, retry=False):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _read_holder(fd)
    finally:
        os.close(fd)


def current_command() -> str:
    """This process's command line as a person typed it (``converge resume runs/x``)."""
    argv = list(sys.argv)
    if argv and os.path.basename(argv[0]) in ("__main__.py", "converge"):
        argv[0] = "converge"
    elif argv:
        argv[0] = os.path.basename(argv[0])
    return shlex.join(argv)


def scrub_command(command: str) -> str:
    """``command`` with URL passwords replaced by ``***`` (a `--storage` URL), cut to 300 characters."""
    command = _QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", command))
    return command if len(command) <= 300 else command[:297] + "..."


def _flock(fd: int, operation: int, *, retry: bool = True) -> bool:
    """True when the lock was taken; False when another holds it (after ``_RETRY_SECONDS`` of retries)."""
    import fcntl

    deadline = time.monotonic() + (_RETRY_SECONDS if retry else 0.0)
    while True:
        try:
            fcntl.flock(fd, operation)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _read_holder(fd: int) -> Holder:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8")
        details = json.loads(text)
        return Holder(pid=int(details["pid"]), host=str(details.get("host", "")),
                      command=str(details.get("command", "")), since=str(details.get("since", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return Holder(pid=None)  # its holder writes it a moment from now


def _holder_pid(lock: FolderLock) -> int:
    if lock._inherited:
        return int(os.environ[INHERIT_ENV].partition(":")[0])
    return os.getpid()
