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
"""

from __future__ import annotations

import os
import re
import socket
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converge.errors import ConvergeError

ENV_VAR = "CONVERGE_STORAGE"
JOURNAL = "study.journal"
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


def open_storage(spec: StorageSpec, *, heartbeat: int = 20) -> Any:
    """The Optuna storage object. Database errors come back as a ConvergeError with the URL redacted."""
    import optuna

    if spec.url is None:
        return _journal_storage(spec.journal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heartbeat API is marked experimental
        retry = _retry_callback()
        try:
            return optuna.storages.RDBStorage(
                spec.url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat, **{_callback_keyword(): retry})
        except Exception as exc:  # noqa: BLE001 - any driver error: report it redacted, without a chain
            raise storage_error(exc, spec) from None


def storage_error(exc: BaseException, spec: StorageSpec) -> ConvergeError:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if spec.url is not None:
        detail = scrub(detail, spec.url)
    if isinstance(exc, ImportError):
        detail += " (for PostgreSQL: pip install 'psycopg[binary]', or 'torch-converge[postgres]')"
    return ConvergeError(f"cannot use storage {spec.shown}: {detail}")


def _journal_storage(path: Path):
    from optuna.storages import JournalStorage

    try:  # optuna >= 4.0
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    except ImportError:  # optuna 3.x
        from optuna.storages import JournalFileOpenLock, JournalFileStorage as JournalFileBackend
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


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
        self._handle = open(self.folder / f"{self.id}.lock", "w")
        fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
