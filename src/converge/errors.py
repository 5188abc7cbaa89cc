"""The one error type that user-facing input problems raise, and its kind for a failing disk."""

from __future__ import annotations

import errno
import os


class ConvergeError(ValueError):
    """Bad input from the user: a task file, data, a flag value or a run folder.

    The CLI prints it as one line (``error: <message>``) and exits with status 2.
    Messages name the argument and the bad value.
    """


class StorageError(ConvergeError):
    """A file could not be written: the disk is full, read-only or not ours to write, or the run folder was
    deleted or replaced under the run. Not converge's failure and not a run's outcome: the CLI prints it as
    one line and exits with status 2, like bad input, since the fix is outside converge.

    ``path``: the file (or folder) that could not be written; ``cause``: why, in words; ``state``: what
    is left (the last checkpoint is intact); ``remedy`` and ``then``: what to do, and how to continue once
    it is done. The run folder fills in ``state``, ``remedy`` and ``then``, since it knows them."""

    def __init__(self, path: str | os.PathLike, cause: str, *, state: str = "", remedy: str = "", then: str = "",
                 error_number: int | None = None) -> None:
        self.path, self.cause, self.error_number = str(path), cause, error_number
        self.state, self.remedy, self.then = state, remedy, then
        advice = ", then ".join(part for part in (remedy, then) if part)
        text = "; ".join(part for part in (f"cannot write {self.path!r}: {cause}", state, advice) if part)
        super().__init__(text)

    @property
    def advised(self) -> bool:
        return bool(self.state or self.then)

    @classmethod
    def from_os_error(cls, exc: OSError, path: str | os.PathLike | None = None) -> "StorageError":
        """``exc`` as a StorageError about ``path`` (else the file the OS error names)."""
        where = path if path is not None else (exc.filename or "?")
        return cls(where, storage_cause(exc), error_number=exc.errno)

    def with_advice(self, *, state: str | None = None, remedy: str | None = None,
                    then: str | None = None) -> "StorageError":
        """The same failure, with what is left and what to do (parts given as None are kept)."""
        return StorageError(self.path, self.cause, error_number=self.error_number,
                            state=self.state if state is None else state,
                            remedy=self.remedy if remedy is None else remedy,
                            then=self.then if then is None else then)


# What a person does about each cause; causes not listed here are fixed "where the storage is".
_REMEDY = {
    errno.ENOSPC: "free some space on that disk",
    errno.EDQUOT: "free some space or raise the disk quota",
    errno.EROFS: "make the file system writable again (remount it read-write)",
    errno.EACCES: "give this user permission to write the folder",
    errno.EPERM: "give this user permission to write the folder",
}


def storage_cause(exc: OSError) -> str:
    """Why a write failed, in the operating system's own words (``No space left on device``)."""
    return exc.strerror or (errno.errorcode.get(exc.errno or -1) if exc.errno else None) or type(exc).__name__


def storage_remedy(error_number: int | None) -> str:
    """What to do about a failed write of cause ``error_number`` (an ``errno`` value)."""
    return _REMEDY.get(error_number, "fix the storage under the folder")
