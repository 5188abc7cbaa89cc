"""TensorBoard event files, for users who already watch their runs there. Written once per epoch from the
loop's epoch end (never per step); the `tensorboard` package is imported only when asked for."""

from __future__ import annotations

import math
from pathlib import Path

from converge.errors import ConvergeError


class TensorBoardLog:
    def __init__(self, path: Path, *, first_epoch: int = 1) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConvergeError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        # purge_step drops what an interrupted run wrote after its checkpoint, so a resumed run's curves
        # do not show those epochs twice.
        self.writer = SummaryWriter(log_dir=str(path), purge_step=first_epoch if first_epoch > 1 else None)

    def log_epoch(self, record: dict, events: list[dict]) -> None:
        epoch = record["epoch"]
        for name, value in record.items():
            if name in ("epoch", "step") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            group = "val" if name.startswith("val_") else "train" if name.startswith("train_") else "run"
            self.writer.add_scalar(f"{group}/{name}", value if math.isfinite(value) else math.nan, epoch)
        lines = [f"**{e['event']}** (step {e.get('step')}): {_describe(e)}" for e in events]
        if lines:
            self.writer.add_text("decisions", "  \n".join(lines), epoch)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _describe(event: dict) -> str:
    if event.get("reason") or event.get("message"):
        return str(event.get("reason") or event.get("message"))
    return ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "epoch", "step"))
