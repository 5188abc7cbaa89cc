"""Full-state checkpoints: written atomically with the previous one kept, loaded only with
``torch.load(weights_only=True)``, so a checkpoint can never run code.

A checkpoint is serialized straight into a temporary file beside the checkpoint (:func:`write_temporary`:
no serialized copy in memory), then made the checkpoint by :func:`commit_checkpoint` (fsync, the old one
kept as the previous, rename), which the run folder does in its background writer."""

from __future__ import annotations

import copy
import io
from contextlib import contextmanager
from pathlib import Path

import torch

from converge.io.atomic import atomic_write_bytes, commit, naming, temporary_beside

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "model", "optimizer", "tracker", "progress", "rng", "logs", "config")


class CheckpointError(Exception):
    """A checkpoint file that cannot be used: missing, truncated, corrupt or from another format."""


def serialize(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(folder: Path, state: dict | bytes) -> None:
    """Write a checkpoint now: ``state`` as a dict, or already serialized."""
    if isinstance(state, bytes):
        atomic_write_bytes(folder / CHECKPOINT, state, keep_previous=folder / PREVIOUS)
    else:
        commit_checkpoint(folder, write_temporary(folder, state))


def _tensors_in(state):
    """Every tensor in ``state`` (nested dicts, lists and tuples)."""
    pending = [state]
    while pending:
        value = pending.pop()
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, (list, tuple)):
            pending.extend(value)


def state_bytes(state) -> int:
    """The bytes of the tensors in ``state``, each storage counted once: about the size of its checkpoint."""
    storages: dict[tuple, int] = {}
    for tensor in _tensors_in(state):
        try:
            storage = tensor.untyped_storage()
            storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a sparse tensor has no single storage
            storages[(tensor.device, id(tensor))] = tensor.element_size() * tensor.numel()
    return sum(storages.values())


def settled(state: dict) -> dict:
    """A copy of ``state``'s dicts, lists and plain values that shares its tensors: what a background writer
    may serialize while the caller goes on changing its own lists and dicts (not its tensors)."""
    memo = {id(tensor): tensor for tensor in _tensors_in(state)}  # deepcopy returns what its memo holds
    return copy.deepcopy(state, memo)


@contextmanager
def _without_crc32():
    """torch.load never checks the CRC-32 that torch.save computes for every record (a flipped bit loads
    as it is; a truncated file fails either way), and computing it was about half of the time it took to
    serialize a 384 MiB state: it is left out of converge's checkpoints. The option is torch's global one,
    set back at once."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def write_temporary(folder: Path, state: dict) -> Path:
    """``state`` serialized into a new temporary file in ``folder`` (tensor by tensor, from their memory to
    the file: no copy of the whole state is built). The file is not yet synced nor a checkpoint."""
    tmp = temporary_beside(folder / CHECKPOINT)
    try:
        with naming(folder / CHECKPOINT), open(tmp, "wb") as handle, _without_crc32():
            writer = _FileWriter(handle)
            try:
                torch.save(state, writer)
            except Exception:
                if writer.failure is not None:
                    raise writer.failure from None
                raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


class _FileWriter:
    """The file torch.save writes to, keeping the OSError of a failed write: torch's serializer turns it
    into its own RuntimeError ("unexpected pos ...") that no longer says why (a full disk, say)."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self.failure: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.failure = self.failure or exc
            raise

    def flush(self) -> None:
        self._handle.flush()


def commit_checkpoint(folder: Path, tmp: Path) -> None:
    """Make the temporary file ``tmp`` (from :func:`write_temporary`) the checkpoint, the old one kept as
    the previous."""
    commit(tmp, folder / CHECKPOINT, keep_previous=folder / PREVIOUS)


def read_checkpoint(path: Path, *, mmap: bool = False) -> dict:
    """``mmap``: tensors are mapped from the file rather than read into memory (for a state that is only
    copied into a live model and optimizer: the divergence guard's rollback)."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a converge checkpoint")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {state['format']}, this converge reads {FORMAT_VERSION}")
    return state


def load_checkpoint(folder: Path, *, mmap: bool = False) -> tuple[dict, Path, list[str]]:
    """The newest usable checkpoint in ``folder``, the file it came from, and the problems met on the way
    (a corrupt newest file falls back to the previous one)."""
    problems: list[str] = []
    for name in (CHECKPOINT, PREVIOUS):
        try:
            return read_checkpoint(folder / name, mmap=mmap), folder / name, problems
        except CheckpointError as exc:
            problems.append(str(exc))
    raise CheckpointError("no usable checkpoint: " + "; ".join(problems))
