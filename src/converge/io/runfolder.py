"""The run folder's files. Small text files are written in the loop (once per epoch); large binary
writes (weights, checkpoints) go to one background thread so the loop never waits on a disk: a
checkpoint is serialized into its temporary file in the loop (no copy in memory) and synced and renamed
in the background; a checkpoint due while the previous one is still being written is skipped, and a
weights file waiting to be written is replaced by a newer one, so the loop never waits for the writer."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from converge.errors import ConvergeError
from converge.io import checkpoint as ckpt
from converge.io.atomic import atomic_write_bytes, atomic_write_text
from converge.io.lock import LOCK_FILE, FolderLock

# Every file name converge writes, in one place (docs/run-folder.md lists them).
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
BEST_WEIGHTS = "best.safetensors"
CURVES = "curves.png"
RUN_INFO = "run.json"
TUNING_STAGES = "tuning.json"
LR_FIND_PLOT = "lr_find.png"
LR_FIND_DATA = "lr_find.json"
DOCTOR_FINDINGS = "doctor.json"
REMEDIES = "remedies.json"
STANDARDIZE = "standardize.json"
REPORT = "report.html"
TENSORBOARD_DIR = "tensorboard"
OWN_FILES = (SUMMARY, METRICS, EVENTS, BEST_WEIGHTS, CURVES, RUN_INFO, TUNING_STAGES, LR_FIND_PLOT,
             ckpt.CHECKPOINT, ckpt.PREVIOUS, DOCTOR_FINDINGS, REMEDIES, STANDARDIZE, REPORT)
OWN_DIRS = (TENSORBOARD_DIR,)

# A `converge tune` folder: the study's summary and report, one run folder per trial, the journal storage
# and the workers' lock files.
TUNE_INFO = "tune.json"
TUNE_REPORT = "tune_report.html"
TRIALS = "trials"
JOURNAL = "study.journal"
WORKERS = "workers"


def lr_find_plot(optimizer: str, first: bool) -> str:
    """`converge lr-find`'s plot for one optimizer: the first one tested is lr_find.png."""
    return LR_FIND_PLOT if first else f"lr_find_{optimizer}.png"


def to_json(value: Any) -> Any:
    """JSON with non-finite floats written as null: strict JSON readers reject NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def read_json_file(path: str | Path, *, strict: bool = True) -> Any:
    """The one reader of converge's JSON files. ``strict``: a missing, unreadable or corrupt file is a
    ConvergeError naming it; otherwise it reads as None (the caller falls back)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if not strict:
            return None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConvergeError(f"{str(path)!r} cannot be read: {reason}") from None


def read_json_object(path: str | Path) -> dict | None:
    """A JSON file that should hold an object, or None when it is missing, unreadable, corrupt or not one."""
    value = read_json_file(path, strict=False)
    return value if isinstance(value, dict) else None


class JsonlLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(to_json(record), allow_nan=False) + "\n")
        self.lines += 1

    def rewrite(self, records: list[dict]) -> None:
        """Replace the whole log at once (a resumed run puts back the checkpoint's copy)."""
        atomic_write_text(self.path, "".join(json.dumps(to_json(r), allow_nan=False) + "\n" for r in records))
        self.lines = len(records)


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metrics = JsonlLog(self.path / METRICS)
        self.events = JsonlLog(self.path / EVENTS)
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._waiting: dict[str, Future] = {}     # the newest job per file, while it may not have started
        self._checkpoint_job: Future | None = None
        self.lock: FolderLock | None = None   # held while this process writes the folder (io/lock.py)

    @classmethod
    def create(cls, path: str | Path, *, force: bool = False, keep: tuple[str, ...] = ()) -> "RunFolder":
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConvergeError(f"output folder {str(path)!r} is a file")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConvergeError(f"output folder {str(path)!r} cannot be written: {exc.strerror or exc}") from None
        lock = FolderLock(path).acquire()  # before the check: two trains cannot both find it empty
        try:
            if any(p.name != LOCK_FILE for p in path.iterdir()):
                if not force:
                    raise ConvergeError(f"output folder {str(path)!r} already exists and is not empty; "
                                        f"pass --force to overwrite it or use `converge resume {path}`")
                for name in OWN_FILES:  # only our own files: --force must never wipe a user's folder
                    if name not in keep:
                        (path / name).unlink(missing_ok=True)
                for name in OWN_DIRS:
                    if name not in keep:
                        shutil.rmtree(path / name, ignore_errors=True)
            try:
                with tempfile.TemporaryFile(dir=path):  # unnamed where the OS allows: nothing left behind
                    pass
            except OSError as exc:
                raise ConvergeError(f"output folder {str(path)!r} cannot be written: {exc.strerror or exc}") from None
        except BaseException:
            lock.release(remove=lock.created)
            raise
        folder = cls(path)
        folder.lock = lock
        return folder

    @classmethod
    def open_existing(cls, path: str | Path, *, lock: bool = True) -> "RunFolder":
        """An existing run folder, locked for writing. ``lock`` False: to read only, without the lock (the
        ranks other than 0 of a data-parallel run: rank 0 holds the lock for all of them, and on several
        machines they could not share it)."""
        path = Path(path)
        if not (path / RUN_INFO).exists():
            raise ConvergeError(f"{str(path)!r} is not a converge run folder (no {RUN_INFO})")
        folder = cls(path)
        if lock:
            folder.lock = FolderLock(path).acquire()  # before anything is read: the checkpoint may be moving
        return folder

    # --- small files, written in the loop -------------------------------------------------------
    def write_json(self, name: str, value: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(to_json(value), indent=2, allow_nan=False) + "\n")

    def read_json(self, name: str) -> Any:
        return read_json_file(self.path / name)

    # --- large files, written in the background ------------------------------------------------
    def write_bytes_later(self, name: str, data: bytes) -> None:
        self.write_later(name, lambda path: atomic_write_bytes(path, data))

    def write_later(self, name: str, write: Callable[[Path], None]) -> None:
        """``write(path)`` (an atomic write of the file ``name``) in the background. A write of the same file
        that has not started yet is dropped: the newer one replaces it."""
        waiting = self._waiting.pop(name, None)
        if waiting is not None and waiting.cancel() and waiting in self._pending:
            self._pending.remove(waiting)
        self._waiting[name] = self._submit(write, self.path / name)

    def write_checkpoint_later(self, state: dict, *, wait: bool = False) -> bool:
        """Serialize ``state`` into a temporary file now (its tensors may change as soon as this returns)
        and make it the checkpoint in the background. While the previous checkpoint is still being written
        this one is skipped (returns False), unless ``wait``: then it waits for it."""
        job = self._checkpoint_job
        if job is not None and not job.done() and not wait:
            return False
        if job is not None:
            self._checkpoint_job = None
            if job in self._pending:
                self._pending.remove(job)
            job.result()  # surfaces a failed write
        tmp = ckpt.write_temporary(self.path, state)
        self._checkpoint_job = self._submit(ckpt.commit_checkpoint, self.path, tmp)
        return True

    @property
    def writing_checkpoint(self) -> bool:
        return self._checkpoint_job is not None and not self._checkpoint_job.done()

    def read_checkpoint(self) -> dict:
        """The newest checkpoint, once the background writes are done, its tensors mapped from the file
        (the divergence guard rolls back to it)."""
        self.flush()
        return ckpt.load_checkpoint(self.path, mmap=True)[0]

    def _submit(self, fn, *args) -> Future:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="converge-writer")
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            future.result()  # surfaces a failed write now rather than at the end of the run
        future = self._writer.submit(fn, *args)
        self._pending.append(future)
        return future

    def flush(self) -> None:
        """Wait for background writes; re-raise the first failure."""
        pending, self._pending, self._waiting, self._checkpoint_job = self._pending, [], {}, None
        for future in pending:
            if not future.cancelled():
                future.result()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path / name)
