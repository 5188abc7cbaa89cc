"""Full-state checkpoints: written atomically with the previous one kept, loaded only with
``torch.load(weights_only=True)``, so a checkpoint can never run code."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from converge.io.atomic import atomic_write_bytes

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


def deserialize(data: bytes, device: torch.device | str = "cpu") -> dict:
    """The inverse of :func:`serialize`, for a state held in memory (the divergence guard's good state)."""
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def save_checkpoint(folder: Path, data: bytes) -> None:
    atomic_write_bytes(folder / CHECKPOINT, data, keep_previous=folder / PREVIOUS)


def read_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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


def load_checkpoint(folder: Path) -> tuple[dict, Path, list[str]]:
    """The newest usable checkpoint in ``folder``, the file it came from, and the problems met on the way
    (a corrupt newest file falls back to the previous one)."""
    problems: list[str] = []
    for name in (CHECKPOINT, PREVIOUS):
        try:
            return read_checkpoint(folder / name), folder / name, problems
        except CheckpointError as exc:
            problems.append(str(exc))
    raise CheckpointError("no usable checkpoint: " + "; ".join(problems))
