"""Atomic writes: a reader sees the old file or the new one, never half of one, even after power loss."""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

# mkstemp creates files readable by their owner only; run files should get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
# What os.link raises where a file system has no hard links (FAT, some network and FUSE file systems).
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, keep_previous: str | Path | None = None) -> None:
    """Write ``data`` to ``path`` atomically. With ``keep_previous``, the old file is kept there too;
    ``path`` itself never goes missing (the old one is hard-linked aside, where the file system allows)."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        with naming(path), open(tmp, "wb") as handle:
            handle.write(data)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    commit(tmp, path, keep_previous=keep_previous)


@contextmanager
def naming(path: str | Path):
    """An OSError raised inside names ``path``, the file being written: a failed ``write()`` names no file,
    and one on the temporary file names a hidden name the user never sees."""
    try:
        yield
    except OSError as exc:
        if exc.filename == str(path) and exc.filename2 is None:
            raise
        # The same error (OSError picks the subclass from errno), naming the file.
        raise OSError(exc.errno, exc.strerror, str(path)).with_traceback(exc.__traceback__) from None


def temporary_beside(path: str | Path) -> Path:
    """A new empty file in ``path``'s folder (hidden, with the usual permissions), to be written and then
    made ``path`` by :func:`commit`."""
    path = Path(path)
    with naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)
    return Path(tmp)


def commit(tmp: str | Path, path: str | Path, *, keep_previous: str | Path | None = None) -> None:
    """Make the written file ``tmp`` (in ``path``'s folder) become ``path`` atomically: flushed to the disk,
    renamed over ``path`` (whose old file goes to ``keep_previous`` when given), the folder synced. On any
    failure ``tmp`` is removed and ``path`` is left as it was."""
    path = Path(path)
    try:
        with naming(path):
            _sync_and_rename(tmp, path, keep_previous)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _sync_and_rename(tmp: str | Path, path: Path, keep_previous: str | Path | None) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if keep_previous is not None and path.exists():
        _keep_copy(path, Path(keep_previous))
    os.replace(tmp, path)


def _keep_copy(path: Path, previous: Path) -> None:
    link = previous.with_name(f".{previous.name}.link")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, previous)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:  # a full or failing disk: leave ``path`` where it is
            raise
        os.replace(path, previous)  # no hard links here: move it aside (missing until the next rename)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def append_whole(path: str | Path, data: bytes, *, sync: bool = False) -> None:
    """``data`` at the end of ``path``, or nothing: a write cut short (a full disk) is taken back, so a
    reader, or the next writer appending onto it, never meets half a record. ``sync``: fsync it too."""
    with open(path, "ab", buffering=0) as handle:  # unbuffered: nothing left to flush after a failure
        size = handle.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[handle.write(view):]
            if sync:
                os.fsync(handle.fileno())
        except OSError:
            try:
                handle.truncate(size)
            except OSError:
                pass
            raise
