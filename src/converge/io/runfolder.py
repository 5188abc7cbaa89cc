"""The run folder's files. Small text files are written in the loop (once per epoch); large binary
writes (weights, checkpoints) go to one background thread so the loop never waits on a disk: a
checkpoint is serialized into its temporary file in the loop (no copy in memory) and synced and renamed
in the background (the run's last one, whose state no longer changes, is serialized there too); a
checkpoint due while the previous one is still being written is skipped, and a weights file waiting to be
written is replaced by a newer one, so the loop never waits for the writer.

Every write, in the loop or the background, first checks that the folder is still the one this run
locked (`RunFolder.writing`: it may have been deleted or replaced under the run), and a write that fails
becomes a StorageError naming the file, the cause, the last checkpoint and the command that continues
(docs/storage-errors.md)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

from converge.errors import ConvergeError, StorageError, storage_remedy
from converge.io import checkpoint as ckpt
from converge.io.atomic import append_whole, atomic_write_bytes, atomic_write_text, naming
from converge.io.lock import LOCK_FILE, FolderLock

# Every file name converge writes, in one place (docs/run-folder.md lists them).
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
BEST_WEIGHTS = "best.safetensors"
LOSS_PARAMETERS = "loss_parameters.safetensors"  # a loss with parameters of its own: theirs, at the best epoch
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
OWN_FILES = (SUMMARY, METRICS, EVENTS, BEST_WEIGHTS, LOSS_PARAMETERS, CURVES, RUN_INFO, TUNING_STAGES, LR_FIND_PLOT,
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
    """``writing(name)``: the context every write happens in (the run folder's checks, see
    `RunFolder.writing`)."""

    def __init__(self, path: Path, writing: Callable[[str], ContextManager] | None = None) -> None:
        self.path = path
        self.lines = 0
        self._writing = writing or (lambda name: nullcontext())

    def append(self, record: dict) -> None:
        line = (json.dumps(to_json(record), allow_nan=False) + "\n").encode("utf-8")
        with self._writing(self.path.name), naming(self.path):
            append_whole(self.path, line)
        self.lines += 1

    def rewrite(self, records: list[dict]) -> None:
        """Replace the whole log at once (a resumed run puts back the checkpoint's copy)."""
        with self._writing(self.path.name):
            atomic_write_text(self.path, "".join(json.dumps(to_json(r), allow_nan=False) + "\n" for r in records))
        self.lines = len(records)


@dataclass(frozen=True)
class _Identity:
    """What makes a run folder the one this run locked: the folder's (device, inode) and its lock file's.
    A folder deleted, or deleted and made again, or moved away with another put in its place, differs."""

    folder: tuple[int, int]
    lock: tuple[int, int] | None

    @classmethod
    def of(cls, path: Path) -> "_Identity":
        folder = os.stat(path)
        try:
            lock = os.stat(path / LOCK_FILE)
        except OSError:
            return cls((folder.st_dev, folder.st_ino), None)
        return cls((folder.st_dev, folder.st_ino), (lock.st_dev, lock.st_ino))

    def changed(self, path: Path, *, run_info: bool) -> tuple[str, str] | None:
        """None while ``path`` is still this folder (``run_info``: its run.json has been written, so it
        must still be there); else what happened to it and what to do, in words. Three stats: cheap
        enough for every write."""
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return "the run folder was deleted while this run was writing it", \
                "start the run again (its checkpoints went with the folder)"
        if (now.st_dev, now.st_ino) != self.folder:
            return "the run folder was deleted or moved, and another one made at its path, while this run " \
                   "was writing it", "start the run again, or resume the moved folder where it is now"
        for name, wanted in ((LOCK_FILE, self.lock is not None), (RUN_INFO, run_info)):
            if not wanted:
                continue
            try:
                found = os.stat(path / name)
            except FileNotFoundError:
                return f"its {name} was deleted while this run was writing the folder (a person or a cleanup " \
                       f"job removed files from it)", "start the run again with --force"
            if name == LOCK_FILE and (found.st_dev, found.st_ino) != self.lock:
                return f"its {name} was deleted and made again while this run was writing the folder", \
                    "start the run again with --force"
        return None


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metrics = JsonlLog(self.path / METRICS, self.writing)
        self.events = JsonlLog(self.path / EVENTS, self.writing)
        self._identity: _Identity | None = None   # taken with the lock: the folder every write checks
        self._run_info_written = False   # from then on a missing run.json means the folder was emptied
        self._failed = False    # a write failed: the background writes still pending are let go quietly
        self._checkpoint_progress: str | None = None  # where this run's last checkpoint stands, in words
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
        folder._hold(lock)
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
            folder._hold(FolderLock(path).acquire())  # before anything is read: the checkpoint may be moving
        return folder

    def _hold(self, lock: FolderLock) -> None:
        """The folder is ours: from now on every write first checks that it is still this folder."""
        self.lock = lock
        try:
            self._identity = _Identity.of(self.path)
        except OSError:
            self._identity = None  # gone already: the first write says so in its own words
        self._run_info_written = self.exists(RUN_INFO)

    # --- the checks around every write ------------------------------------------------------------
    @contextmanager
    def writing(self, name: str, *, background: bool = False):
        """Around a write of the file ``name`` (run.json, report.html...): first, is the folder still the
        one this run locked (a person or a cleanup job may have deleted or replaced it)? Then an OSError
        of the write becomes a StorageError that says what is left and how to continue. ``background``:
        in the writer thread, whose failure reaches the run later (at its next write, or the end)."""
        try:
            if not background:
                self._surface_failures()
            self.check_still_here()
            yield
        except (StorageError, OSError) as exc:
            if not background:
                self._failed = True
            if isinstance(exc, OSError):
                exc = StorageError.from_os_error(exc, exc.filename or self.path / name)
            # A write that failed because the folder went says that (not ENOENT), as things stand now (not
            # as the writer thread saw them, half-way through an `rm -rf`).
            self.check_still_here()
            raise self._advised(exc) from None

    def check_still_here(self) -> None:
        """A StorageError when the folder is no longer the one this run locked (see `_Identity`)."""
        if self._identity is None:
            return
        changed = self._identity.changed(self.path, run_info=self._run_info_written)
        if changed is not None:
            cause, then = changed
            raise StorageError(self.path, cause, state="the run stopped without writing into it again", then=then)

    def _advised(self, exc: StorageError) -> StorageError:
        if exc.advised:
            return exc
        if self._identity is None:  # not a run this process holds (a tune folder's summary): no checkpoint
            return exc.with_advice(remedy=storage_remedy(exc.error_number), then="run the same command again")
        return exc.with_advice(state=self._checkpoint_state(), remedy=storage_remedy(exc.error_number),
                               then=self._continue_command())

    def _checkpoint_state(self) -> str:
        if self._checkpoint_progress is not None:
            return f"the last checkpoint ({self._checkpoint_progress}) is intact"
        if self.exists(ckpt.CHECKPOINT) or self.exists(ckpt.PREVIOUS):
            return "the last checkpoint is intact"
        return "no checkpoint had been written yet"

    def _continue_command(self) -> str:
        info = read_json_object(self.path / RUN_INFO)
        if info is None:
            return "run the same command again with --force"
        if "task" not in info:  # written by converge.fit()
            return f"continue with fit(..., out={str(self.path)!r}, resume=True)"
        return f"continue with `converge resume {self.path}`"

    # --- small files, written in the loop -------------------------------------------------------
    def write_json(self, name: str, value: Any) -> None:
        with self.writing(name):
            atomic_write_text(self.path / name, json.dumps(to_json(value), indent=2, allow_nan=False) + "\n")
        self._run_info_written = self._run_info_written or name == RUN_INFO

    def read_json(self, name: str) -> Any:
        return read_json_file(self.path / name)

    # --- large files, written in the background ------------------------------------------------
    def write_bytes_later(self, name: str, data: bytes) -> None:
        self.write_later(name, lambda path: atomic_write_bytes(path, data))

    def write_later(self, name: str, write: Callable[[Path], None]) -> None:
        """``write(path)`` (an atomic write of the file ``name``) in the background. A write of the same file
        that has not started yet is dropped: the newer one replaces it."""
        with self.writing(name):
            waiting = self._waiting.pop(name, None)
            if waiting is not None and waiting.cancel() and waiting in self._pending:
                self._pending.remove(waiting)
            self._waiting[name] = self._submit(self._in_background, name, write)

    def _in_background(self, name: str, write: Callable[[Path], None]) -> None:
        """A background write, checked like the loop's own (the folder may have gone since it was queued),
        and again once written: a folder put in the run's place while the writer wrote (the writer thread
        may wait a while between the check and the write) gets no file of this run's left in it."""
        with self.writing(name, background=True):
            write(self.path / name)
            if self._identity is not None and \
                    self._identity.changed(self.path, run_info=self._run_info_written) is not None:
                (self.path / name).unlink(missing_ok=True)
                self.check_still_here()

    def write_checkpoint_later(self, state: dict, *, wait: bool = False, settled: bool = False) -> bool:
        """Serialize ``state`` into a temporary file now (its tensors may change as soon as this returns)
        and make it the checkpoint in the background. While the previous checkpoint is still being written
        this one is skipped (returns False), unless ``wait``: then it waits for it. ``settled``: nothing in
        ``state`` changes any more (the run's last checkpoint), so it is serialized in the background too."""
        job = self._checkpoint_job
        if job is not None and not job.done() and not wait:
            return False
        with self.writing(ckpt.CHECKPOINT):
            if job is not None:
                self._checkpoint_job = None
                if job in self._pending:
                    self._pending.remove(job)
                job.result()  # surfaces a failed write
            if settled:
                self._checkpoint_job = self._submit(self._write_checkpoint, state)
            else:
                tmp = ckpt.write_temporary(self.path, state)
                try:
                    # Until the writer thread owns it, the temporary file is this call's to remove: the
                    # folder may have been replaced while it was made (it would then lie in the new one),
                    # and handing it over raises a background write's failure first.
                    self.check_still_here()
                    self._checkpoint_job = self._submit(self._commit_checkpoint, tmp, state.get("progress"))
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
        return True

    def _write_checkpoint(self, state: dict) -> None:
        """In the background: ``state`` serialized and made the checkpoint."""
        with self.writing(ckpt.CHECKPOINT, background=True):
            tmp = ckpt.write_temporary(self.path, state)
        self._commit_checkpoint(tmp, state.get("progress"))

    def _commit_checkpoint(self, tmp: Path, progress: dict | None) -> None:
        """In the background: ``tmp`` becomes the checkpoint (or, on any failure, is removed: the last
        checkpoint stays as it was)."""
        try:
            with self.writing(ckpt.CHECKPOINT, background=True):
                ckpt.commit_checkpoint(self.path, tmp)
        finally:
            tmp.unlink(missing_ok=True)  # gone already after a commit; left by a failed check
        if progress is None:  # a state without a run's counters: nothing to name
            return
        epoch, step = progress["epoch"], progress["step"]
        if progress.get("batch"):
            self._checkpoint_progress = f"epoch {epoch + 1}, step {step}"
        else:
            self._checkpoint_progress = f"end of epoch {epoch}, step {step}" if epoch else "before the first step"

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
        self._surface_failures()
        future = self._writer.submit(fn, *args)
        self._pending.append(future)
        return future

    def _surface_failures(self) -> None:
        """A background write that failed is raised now (a StorageError), at the loop's next write, rather
        than at the end of the run."""
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            if not future.cancelled():
                future.result()

    def flush(self) -> None:
        """Wait for background writes; re-raise the first failure. After a failed write has been raised,
        the rest only wait: their failures are the same one again, and would hide its message."""
        pending, self._pending, self._waiting, self._checkpoint_job = self._pending, [], {}, None
        failed_before = self._failed
        for future in pending:
            if future.cancelled():
                continue
            if failed_before:
                future.exception()  # waits; a StorageError here adds nothing to the one raised already
            elif future.exception() is not None:
                self._failed = True
                raise future.exception()

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
