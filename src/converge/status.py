"""How a run ended: one type that carries, for every stop, its exit code, its wording and its report colour.

A new stop rule adds one member here; the CLI's exit status, the report's badge and curve marks, and
resume's "already finished" check all read it from this table. Files and checkpoints hold the plain
string value (``Status.CONVERGED.value == "converged"``), so they stay readable without this module.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """A run's final (or interrupted) state. Members compare equal to their string values."""

    CONVERGED = "converged"
    MAX_EPOCHS = "max_epochs"
    PRUNED = "pruned"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:  # f-strings and str() give the value on every Python version
        return self.value

    @property
    def exit_code(self) -> int:
        """`converge train` / `resume` exit status: 0 finished, 3 diverged, 130 interrupted (resumable)."""
        return _EXIT_CODE[self]

    @property
    def tone(self) -> str:
        """The report's colour for this status: good, warn, bad or info."""
        return _TONE[self]

    @property
    def wording(self) -> str:
        """A short phrase for a person ("stopped at --max-epochs")."""
        return _WORDING[self]

    @property
    def resumable(self) -> bool:
        """Whether `converge resume` continues such a run as it stands (``max_epochs`` with a larger cap,
        see :func:`is_final`)."""
        return self in (Status.INTERRUPTED, Status.MAX_EPOCHS)


_EXIT_CODE = {Status.CONVERGED: 0, Status.MAX_EPOCHS: 0, Status.PRUNED: 0, Status.DIVERGED: 3,
              Status.INTERRUPTED: 130}
_TONE = {Status.CONVERGED: "good", Status.MAX_EPOCHS: "warn", Status.PRUNED: "info", Status.DIVERGED: "bad",
         Status.INTERRUPTED: "info"}
_WORDING = {Status.CONVERGED: "converged", Status.MAX_EPOCHS: "stopped at --max-epochs",
            Status.PRUNED: "pruned by the search", Status.DIVERGED: "diverged",
            Status.INTERRUPTED: "interrupted (resumable)"}

STOP_EVENTS = tuple(status.value for status in Status)   # each stop is logged as an event of its own name


def is_final(status: str | None, epoch: int, max_epochs: int) -> bool:
    """Whether a run that stopped with ``status`` after ``epoch`` epochs is over for a cap of
    ``max_epochs``: an interrupted run never is, one stopped at its cap is until the cap is raised."""
    if status is None:
        return False
    status = Status(status)
    if status is Status.MAX_EPOCHS:
        return epoch >= max_epochs
    return not status.resumable
