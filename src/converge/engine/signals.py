"""Stop requests from outside: the first Ctrl-C (or SIGTERM) asks the loop to checkpoint and stop at the
next optimizer step; a second one stops at once."""

from __future__ import annotations

import signal
import threading

import torch


class StopSignals:
    def __init__(self) -> None:
        self.requested: str | None = None   # the signal's name once one arrived
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            # Under torchrun each process has a session of its own: a terminal's Ctrl-C reaches torchrun only,
            # which passes the same signal on to every process, once.
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agree(self, world, device: torch.device, flags: list[bool]) -> tuple[bool, list[bool]]:
        """(stop, flags): whether to stop now, and each flag true when it is on any rank. Under torchrun every
        rank must stop (or checkpoint) after the same step, so both come from one collective; a stop asked of
        another process counts as requested here too. The answer is what the ranks agreed on, never
        ``requested`` read afterwards: a signal handled just after the collective (Python runs handlers as a
        blocking call returns, so that is when one lands) would stop this rank alone, and the others would
        wait in their next collective for it until torchrun killed them all."""
        if world is None:
            return self.requested is not None, flags
        agreed = world.any_flags([self.requested is not None, *flags], device)
        if agreed[0] and self.requested is None:
            self.requested = "a stop request to another process"
        return agreed[0], agreed[1:]
