"""Imports done late, without keeping the caller alive.

Some libraries make reference cycles through frames while they are imported (torch.fx's ``wrap``, run when
torch._dynamo is imported by the first optimizer, keeps its own frame, and with it every caller's frame,
until the garbage collector runs). Imported from inside a training run, such a cycle would hold the run's
whole state (model, optimizer, best weights) after it returned. :func:`preload` imports from a short-lived
thread instead, whose frames hold nothing of the caller's.
"""

from __future__ import annotations

import importlib
import sys
import threading


def preload(*names: str) -> None:
    """Import the modules ``names`` (those already imported cost nothing) from a thread of their own;
    an import error is raised here, in the caller."""
    missing = [name for name in names if name not in sys.modules]
    if not missing:
        return
    failures: list[BaseException] = []

    def load() -> None:
        for name in missing:
            try:
                importlib.import_module(name)
            except BaseException as exc:  # raised again in the caller's thread
                failures.append(exc)
                return

    thread = threading.Thread(target=load, name="converge-import", daemon=True)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]
