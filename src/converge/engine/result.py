"""What a run hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn


@dataclass
class FitResult:
    """What a run hands back: the model with its best weights loaded, the summary and the history.

    Attributes:
        model: the trained model, with its best weights loaded (left on the device it trained on).
        summary: the same dict as the run folder's ``summary.json``.
        history: one dict per epoch, as in ``metrics.jsonl``.
        events: every decision, as in ``events.jsonl``.
        run_dir: the run folder (None when nothing was written: ``out=None``).
    """

    model: nn.Module
    summary: dict
    history: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def status(self) -> str:
        """How the run ended: ``summary["status"]`` ("converged", "max_epochs", "diverged", ...)."""
        return self.summary["status"]

    def _repr_html_(self) -> str:
        """How Jupyter shows the result: status, stop reason, diagnosis and curves, inline."""
        from converge.report.inline import result_html

        return result_html(self.summary, self.history, self.events, self.run_dir)
