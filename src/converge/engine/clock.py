"""The run's two times, kept across the commands that ran it (a resumed run adds to them): the wall time
(set-up, choosing the knobs, the doctor, training, the end) and, of it, the time in the training loop."""

from __future__ import annotations

import time


class RunClock:
    """``started``: when the command that runs the loop started (``time.monotonic()``), so the wall time
    includes its set-up."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.wall_before = 0.0    # of the commands that ran this run before it was resumed
        self.trained_before = 0.0
        self._loop_started = time.monotonic()

    def start_loop(self) -> None:
        self._loop_started = time.monotonic()

    def stop_loop(self) -> None:
        """A later loop (the race's extend) adds to the training time so far."""
        self.trained_before = self.train_seconds()

    def wall_seconds(self) -> float:
        return self.wall_before + time.monotonic() - self.started

    def train_seconds(self) -> float:
        return self.trained_before + time.monotonic() - self._loop_started

    def load(self, wall_seconds: float | None, train_seconds: float | None) -> None:
        """The times a checkpoint recorded (the earlier commands')."""
        self.wall_before, self.trained_before = float(wall_seconds or 0.0), float(train_seconds or 0.0)
