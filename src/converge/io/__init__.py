"""The run folder: atomic files, checkpoints, JSON-lines logs, safetensors weights."""

from converge.io.atomic import atomic_write_bytes, atomic_write_text
from converge.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from converge.io.runfolder import RunFolder

__all__ = ["CheckpointError", "RunFolder", "atomic_write_bytes", "atomic_write_text", "load_checkpoint",
           "save_checkpoint"]
