"""What a run hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn


@dataclass
class FitResult:
    """What a run hands back: the model with its best weights loaded, the summary and the history."""

    model: nn.Module
    summary: dict
    history: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def status(self) -> str:
        return self.summary["status"]
