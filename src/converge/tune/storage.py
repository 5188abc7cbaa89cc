"""Where a `converge tune` study lives, and how its credentials stay out of sight.

* **Embedded (default)**: Optuna's journal storage, an append-only log file in the tune folder
  (``DIR/study.journal``). Several processes on one machine may write it at once: each append takes a
  file lock, and a lock left by a killed writer expires. SQLite is *not* used: Optuna's own FAQ advises
  against it for parallel optimization (``database is locked`` under concurrent writers).
* **Any SQLAlchemy URL** (``--storage``, ``--storage-file`` or ``CONVERGE_STORAGE``), PostgreSQL first: for
  workers on several machines. Optuna's RDB heartbeat marks a trial whose worker died as failed and the
  retry callback queues a copy of it.

The URL is only ever shown redacted (``postgresql://user:***@host/db``); storage errors become a
ConvergeError whose message has the password scrubbed out.

A journal whose last record was cut short (a full disk, a power cut, a writer killed in mid-write) would
otherwise break the study for good: Optuna appends the next record onto the unterminated line, and every
later read fails on it. So the torn end is set aside in a side file (``study.journal.torn-<time>``) with
one line on stderr, under the journal's own write lock: when the study is opened, and again before every
append (another worker may have died in mid-write since). A failed append of our own is cut back off.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from converge.errors import ConvergeError
from converge.io.atomic import append_whole

ENV_VAR = "CONVERGE_STORAGE"
JOURNAL = "study.journal"
TORN = ".torn-"                # study.journal.torn-<time>: bytes set aside from the journal, kept for a person
WORKERS = "workers"
MAX_RETRY = 3                  # a trial whose worker died is queued again at most this often
_QUERY_SECRET = re.compile(r"(?i)((?:password|passwd|pwd|sslpassword)=)[^&;#\s]*")


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (``postgresql://user:***@host/db``)."""
    user, password, tail = _split_userinfo(url)
    if password is not None:
        url = f"{user}:***@{tail}"
    return _QUERY_SECRET.sub(r"\1***", url)


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """(scheme://user, password or None, host and the rest). A password may hold ':' or '@' unquoted:
    everything between the user's ':' and the last '@' counts. A string that is not a URL is split the
    same way from its first ':'."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, tail = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url, None, ""
    user, password = userinfo.split(":", 1)
    return f"{scheme}{sep}{user}", password, tail


def secrets_of(url: str) -> list[str]:
    """The secret parts of a URL (password, URL-decoded too), longest first, to scrub from any text."""
    from urllib.parse import unquote

    found = []
    _, password, _ = _split_userinfo(url)
    if password:
        found += [password, unquote(password)]
    found += [value.split("=", 1)[1] for value in (m.group(0) for m in _QUERY_SECRET.finditer(url))]
    found = [s for s in found if s and s != "***"]
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with the URL redacted and every secret of it replaced by ``***``."""
    text = text.replace(url, redact(url))
    for secret in secrets_of(url):
        text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class StorageSpec:
    """What the user asked for: a journal file in the tune folder, or a database URL."""

    url: str | None                # None: embedded journal
    journal: Path | None = None
    source: str = "embedded"       # "embedded", "--storage", "--storage-file", CONVERGE_STORAGE

    @property
    def shown(self) -> str:
        """What may be printed or written to a file."""
        return f"journal:{self.journal}" if self.url is None else redact(self.url)

    @property
    def kind(self) -> str:
        return "journal" if self.url is None else "rdb"


def resolve_storage(out: Path, *, storage: str | None = None, storage_file: str | Path | None = None,
                    environ: dict | None = None) -> StorageSpec:
    """--storage URL, else --storage-file PATH (a file holding the URL), else $CONVERGE_STORAGE, else the
    embedded journal in ``out``."""
    environ = os.environ if environ is None else environ
    if storage is not None and storage_file is not None:
        raise ConvergeError("pass --storage or --storage-file, not both")
    if storage is not None:
        return StorageSpec(_checked_url(storage, "--storage"), source="--storage")
    if storage_file is not None:
        path = Path(storage_file)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConvergeError(f"--storage-file {str(path)!r} cannot be read: "
                                f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        return StorageSpec(_checked_url(text, f"the URL in --storage-file {str(path)!r}"), source="--storage-file")
    if environ.get(ENV_VAR):
        return StorageSpec(_checked_url(environ[ENV_VAR].strip(), f"${ENV_VAR}"), source=ENV_VAR)
    return StorageSpec(None, journal=Path(out) / JOURNAL)


def _checked_url(url: str, where: str) -> str:
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", url or ""):
        raise ConvergeError(f"{where} must be an SQLAlchemy URL such as postgresql://user:PASSWORD@host/db, "
                            f"got {redact(url)!r}")
    return url


def open_storage(spec: StorageSpec, *, heartbeat: int = 20, say: Callable[[str], None] | None = None) -> Any:
    """The Optuna storage object. Database errors come back as a ConvergeError with the URL redacted.
    ``say`` tells of a torn journal record set aside (default: a ``warning:`` line on stderr)."""
    import optuna

    if spec.url is None:
        return _journal_storage(spec.journal, say=say)
    quiet_heartbeat_failures()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heartbeat API is marked experimental
        retry = _retry_callback()
        for attempt in range(CREATE_ATTEMPTS):
            try:
                return optuna.storages.RDBStorage(
                    spec.url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat,
                    grace_period=3 * heartbeat, **{_callback_keyword(): retry})
            except Exception as exc:  # noqa: BLE001 - any driver error: report it redacted, without a chain
                # Workers starting together on a new database race to create Optuna's tables; the loser
                # sees a duplicate-key error and finds the tables there on the next try.
                if attempt + 1 < CREATE_ATTEMPTS and _creation_race(exc):
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise storage_error(exc, spec) from None


CREATE_ATTEMPTS = 5


def quiet_heartbeat_failures() -> None:
    """Optuna records a trial's heartbeat from a thread of its own. When the database goes away, that thread
    dies and Python prints its traceback, beside the one line (`error: cannot use storage ...`) the worker
    itself reports when it next touches the storage. Drop the heartbeat thread's traceback: the worker's
    line says it all, and a trial whose heartbeat stopped is retried by the next worker as for a dead one.
    Any other thread's exception is printed as before. Installing it twice is harmless."""
    previous = threading.excepthook
    if getattr(previous, "quiet_heartbeat", False):
        return

    def hook(args) -> None:
        frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback is not None else []
        if any(frame.name == "_record_heartbeat" for frame in frames):
            return
        previous(args)

    hook.quiet_heartbeat = True
    threading.excepthook = hook


def _creation_race(exc: BaseException) -> bool:
    """A concurrent CREATE TABLE lost to another worker (PostgreSQL: a unique violation on the catalog)."""
    text = str(exc)
    return type(exc).__name__ in ("IntegrityError", "ProgrammingError", "OperationalError") and (
        "already exists" in text or "duplicate key" in text)


def storage_error(exc: BaseException, spec: StorageSpec) -> ConvergeError:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if spec.url is not None:
        detail = scrub(detail, spec.url)
    if isinstance(exc, ImportError):
        detail += " (for PostgreSQL: pip install 'psycopg[binary]', or 'torch-converge[postgres]')"
    return ConvergeError(f"cannot use storage {spec.shown}: {detail}")


def _journal_storage(path: Path, *, say: Callable[[str], None] | None = None):
    from optuna.storages import JournalStorage

    backend, lock = _journal_classes()
    say = say or _warn
    repair_journal(path, say=say)
    return JournalStorage(_torn_safe(backend)(str(path), lock_obj=lock(str(path)), say=say))


def _journal_classes() -> tuple[type, type]:
    try:  # optuna >= 4.0
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    except ImportError:  # optuna 3.x
        from optuna.storages import JournalFileOpenLock, JournalFileStorage as JournalFileBackend
    return JournalFileBackend, JournalFileOpenLock


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


# --- the journal's torn end -----------------------------------------------------------------------
_RECORD_START = b'{"op_code":'   # how Optuna's journal writes every record


@dataclass(frozen=True)
class JournalRepair:
    """What repair_journal did: ``set_aside`` bytes moved to ``side_file``, ``kept`` bytes left."""

    kept: int
    set_aside: int
    side_file: Path
    message: str


def repair_journal(path: str | Path, *, say: Callable[[str], None] | None = None) -> JournalRepair | None:
    """Set aside whatever in the journal at ``path`` no reader can use -- an unterminated last record, or
    undecodable lines at its end -- in a side file next to it, and say so in one line. A line that holds
    the start of a torn record with a whole record appended after it (what an earlier converge did after
    a torn write) is split: the torn start is set aside and the record kept. Any other undecodable line
    with good records after it is refused (ConvergeError): converge will not guess what it held.
    Returns None when the journal is whole (or missing). Runs under the journal's write lock."""
    path = Path(path)
    if not path.exists():
        return None
    lock = _journal_classes()[1](str(path))
    try:
        lock.acquire()
    except (OSError, RuntimeError):  # optuna's lock hides an OSError (a read-only folder) behind a RuntimeError
        reason = "its folder is not writable" if not os.access(path.parent, os.W_OK) else "its lock file cannot be made"
        raise ConvergeError(f"cannot use storage journal:{path}: {reason}") from None
    try:
        return _repair_locked(path, say or _warn)
    finally:
        lock.release()


def _repair_locked(path: Path, say: Callable[[str], None]) -> JournalRepair | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConvergeError(f"{str(path)!r} cannot be read: {exc.strerror or exc}") from None
    good, aside, what = split_journal(data, path)
    if not aside:
        return None
    side = _set_aside(path, aside)
    try:
        if data.startswith(good):
            with open(path, "r+b") as handle:
                handle.truncate(len(good))
                handle.flush()
                os.fsync(handle.fileno())
        else:  # a record was split out of a line: the file is written again, atomically
            from converge.io.atomic import atomic_write_bytes

            atomic_write_bytes(path, good)
    except OSError as exc:
        raise ConvergeError(f"cannot repair {str(path)!r} (its torn end is saved in {side.name}): "
                            f"{exc.strerror or exc}") from None
    message = f"{path.name} {what}; {len(aside)} byte(s) set aside in {side.name}, continuing"
    say(message)
    return JournalRepair(kept=len(good), set_aside=len(aside), side_file=side, message=message)


def split_journal(data: bytes, path: Path | str = JOURNAL) -> tuple[bytes, bytes, str]:
    """(the bytes to keep, the bytes to set aside, what was wrong in words). A pure function of the
    journal's bytes; ``path`` only names the file in an error."""
    lines = data.split(b"\n")
    unterminated = lines.pop()  # b"" when the journal ends with a newline
    kept: list[bytes] = []
    aside: list[bytes] = []
    problems: list[str] = []
    bad_at: int | None = None   # the first undecodable line that could not be mended
    for number, line in enumerate(lines, 1):
        if _is_record(line):
            if bad_at is not None:
                raise ConvergeError(
                    f"{str(path)!r} is corrupt at line {bad_at} (not a journal record, with good records after "
                    f"it); converge will not guess what it held: move the file aside to start the study again")
            kept.append(line)
            continue
        start = _appended_record(line)
        if start is not None and bad_at is None:
            aside.append(line[:start])
            kept.append(line[start:])
            problems.append(f"line {number} held a torn record with the next one appended to it")
        elif bad_at is None:
            bad_at = number
            aside.append(line + b"\n")
        else:
            aside.append(line + b"\n")
    if bad_at is not None:
        problems.append(f"ended in {len(lines) - bad_at + 1} line(s) that are not journal records")
    if unterminated:
        aside.append(unterminated)
        problems.append("ended in a torn record (its writer stopped in mid-write)")
    good = b"".join(line + b"\n" for line in kept)
    return good, b"".join(aside), " and ".join(problems)


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return False


def _appended_record(line: bytes) -> int | None:
    """Where a whole record starts inside ``line`` after a torn start, or None."""
    at = line.find(_RECORD_START, 1)
    while at != -1:
        if _is_record(line[at:]):
            return at
        at = line.find(_RECORD_START, at + 1)
    return None


def _set_aside(path: Path, data: bytes) -> Path:
    """``data`` in a new side file ``<journal>.torn-<time>``, on disk before the journal is touched."""
    from converge.io.atomic import atomic_write_bytes

    stamp = time.strftime("%Y%m%d-%H%M%S")
    side, number = path.with_name(f"{path.name}{TORN}{stamp}"), 1
    while side.exists():
        number += 1
        side = path.with_name(f"{path.name}{TORN}{stamp}-{number}")
    try:
        atomic_write_bytes(side, data)
    except OSError as exc:
        raise ConvergeError(f"{str(path)!r} ends in a torn record that cannot be set aside in {side.name}: "
                            f"{exc.strerror or exc}") from None
    return side


def _unterminated_tail(path: Path) -> int:
    """Bytes after the journal's last newline (0 for a whole journal): the torn end of a dead writer."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        position, block = end, 4096
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline != -1:
                return end - (position + newline + 1)
        return end


def _torn_safe(base: type) -> type:
    """Optuna's journal file backend, made to set a torn end aside before it appends, and to cut its own
    failed append (a full disk) back off instead of leaving half a record."""

    class TornSafeJournalBackend(base):
        def __init__(self, file_path: str, lock_obj, say: Callable[[str], None]) -> None:
            super().__init__(file_path, lock_obj=lock_obj)
            self._converge_path, self._converge_lock, self._converge_say = Path(file_path), lock_obj, say

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
            self._converge_lock.acquire()
            try:
                if _unterminated_tail(self._converge_path):
                    _repair_locked(self._converge_path, self._converge_say)
                append_whole(self._converge_path, data, sync=True)
            finally:
                self._converge_lock.release()

    return TornSafeJournalBackend


def _retry_callback():
    from optuna import storages

    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return cls(max_retry=MAX_RETRY)


def _callback_keyword() -> str:
    import inspect

    import optuna

    params = inspect.signature(optuna.storages.RDBStorage).parameters
    return "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"


# --- workers on one machine (embedded journal) ---------------------------------------------------------
class WorkerLock:
    """A worker's identity, alive as long as its process: it holds an exclusive lock on
    ``DIR/workers/<id>.lock`` and the kernel drops the lock when the process dies (SIGKILL included).
    Another worker that can take the lock knows the owner is gone. For the embedded journal, whose
    workers share one machine and one folder; database storages use Optuna's heartbeat instead."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder) / WORKERS
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._handle = None

    def acquire(self) -> "WorkerLock":
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        # Held open for the worker's whole life (it is the lock), so no `with`: closed on failure here and
        # by release() or the process's death otherwise.
        handle = open(self.folder / f"{self.id}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            (self.folder / f"{self.id}.lock").unlink(missing_ok=True)
            self._handle = None

    def is_alive(self, worker_id: str) -> bool:
        import fcntl

        if worker_id == self.id:
            return True
        path = self.folder / f"{worker_id}.lock"
        try:
            handle = open(path, "a")
        except OSError:
            return False
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True   # its owner still holds it
            fcntl.flock(handle, fcntl.LOCK_UN)
        path.unlink(missing_ok=True)
        return False


def fail_dead_trials(study, workers: WorkerLock, *, orphan_seconds: float = 120.0) -> list[int]:
    """Mark RUNNING trials whose worker process is gone as FAIL and queue a retry of each (the same
    parameters, as Optuna's RetryHeartbeatStaleTrialCallback does). Returns the failed trial numbers.
    A RUNNING trial without a worker (killed between creating the trial and naming its worker) counts
    as dead after ``orphan_seconds``."""
    import datetime

    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    failed = []
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is not None and workers.is_alive(worker):
            continue
        if worker is None and trial.datetime_start and (now - trial.datetime_start).total_seconds() < orphan_seconds:
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another worker got there first
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _retry_callback()(study, study._storage.get_trial(trial._trial_id))
        failed.append(trial.number)
    return failed
