"""What a run hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from converge.engine.optim import current_lr


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


def run_summary(*, status, stop_reason: str, epochs: int, steps: int, tracker, monitor: str, mode: str,
                best_record: dict, optimizer, rollbacks: int, test: dict | None = None,
                metric_notes: list | None = None, **facts) -> dict:
    """summary.json's account of how a run ended and what it kept, the same from every front door (the
    Trainer, `Monitor` and the callbacks); ``facts``: what the front door knows beside (the hyperparameters,
    the task's kind, the times, the options, the diagnosis). ``test`` and ``metric_notes`` only when there
    are some."""
    summary = {"status": status.value, "stop_reason": stop_reason, "epochs": epochs, "steps": steps,
               "best_epoch": tracker.best_epoch, "monitor": monitor, "mode": mode, "best": dict(best_record),
               "final_lr": current_lr(optimizer), "lr_reductions": tracker.total_cuts, "rollbacks": rollbacks,
               **facts}
    if test:
        summary["test"] = test
    if metric_notes:
        summary["metric_notes"] = list(metric_notes)
    return summary
