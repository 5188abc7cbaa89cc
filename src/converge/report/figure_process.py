"""A run's figures drawn by a Python process of their own, so that the run's end does not wait for matplotlib.

matplotlib's import (0.4-0.6 s) and the figures were most of what a small run's end cost: on an LSTM
forecaster, 0.8 s of the 1.0 s between its last epoch and the command's end. A `FigureProcess` is a second
interpreter that imports matplotlib while the run trains, draws each figure it is sent as soon as it has it
(lr_find.png during training, curves.png at the end) and sends the PNGs back. A process, not a thread:
a thread importing and drawing beside training held the interpreter's lock through an LSTM's first epoch
(1.0 s instead of 0.15 s). It moves work off the run rather than adding any (a Python start-up, about
30 ms, is all it adds): the run's own process then never imports matplotlib.

Anything may go wrong -- no interpreter to start, a worker that crashes, hangs or is not ready by the end:
the caller then draws in its own process, as it always could (`converge.engine.recorder.RunRecorder`).
The worker ends when its input closes: when the run closes it, or when the run's process dies.

The protocol, one JSON object a line: the worker says ``ready`` once matplotlib is imported; each job
``{"name", "figure", "args"}`` (`converge.report._figures.figure_png`) is answered by ``{"name", "png"}``
(base64, or null: nothing to draw) or ``{"name", "error"}``.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

READY = "ready"

# The worker imports the report's modules without running converge/__init__.py, whose public API imports
# torch (2 s): a bare package module stands in for it. Nothing the figures need imports torch.
_BOOTSTRAP = ("import sys, types; package = types.ModuleType('converge'); package.__path__ = [{path!r}]; "
              "sys.modules['converge'] = package; from converge.report.figure_process import serve; serve()")


class FigureProcess:
    """The run's side: start the worker, send it figures once it is ready, collect the PNGs."""

    def __init__(self, process: subprocess.Popen) -> None:
        self._process = process
        self._replies: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._pending: list[str] = []
        # A reader thread, so that waiting for a reply can time out on every platform (no select on pipes on
        # Windows); it sleeps in a blocking read, which holds no interpreter lock while training goes on.
        self._reader = threading.Thread(target=self._read, name="converge-figures", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls) -> FigureProcess | None:
        """A worker on its way to ready, or None where none can be started. ``sys.executable`` is run only
        when it is a Python interpreter (an application embedding Python has its own binary there)."""
        if not Path(sys.executable or "").name.lower().startswith("python"):
            return None
        package = str(Path(__file__).resolve().parents[1])
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP.format(path=package)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, encoding="utf-8",
                start_new_session=os.name == "posix")  # a Ctrl-C meant for the run does not reach the worker
        except (OSError, ValueError):
            return None
        return cls(process)

    def _read(self) -> None:
        try:
            for line in self._process.stdout:
                if line.strip() == READY:
                    self._ready.set()
                    continue
                self._replies.put(json.loads(line))
        except (OSError, ValueError):
            pass
        self._replies.put(None)  # the worker is gone, or going: this thread collects its exit, not the run
        self._process.stdout.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # output closed but the worker lives on: it is of no more use
            self._process.kill()
            self._process.wait()

    @property
    def ready(self) -> bool:
        """Whether the worker has matplotlib imported and reads its jobs."""
        return self._ready.is_set() and self._process.poll() is None

    def submit(self, name: str, figure: str, args: dict) -> bool:
        """Send the figure ``figure`` (`converge.report._figures.figure_png`) to be drawn as ``name``; False
        when it could not be sent. Sent only to a ready worker, which reads at once: a write never waits for
        an import to finish."""
        if not self.ready:
            return False
        try:
            self._process.stdin.write(json.dumps({"name": name, "figure": figure, "args": args}) + "\n")
            self._process.stdin.flush()
        except (OSError, TypeError, ValueError):  # a closed pipe, or values JSON cannot hold
            return False
        self._pending.append(name)
        return True

    def collect(self, timeout: float) -> dict[str, bytes | None]:
        """The PNG (None: nothing to draw) of every figure sent, by name, waiting at most ``timeout`` seconds
        in all; a figure that failed, or was not back in time, is left out (the caller draws it)."""
        deadline = time.monotonic() + timeout
        drawn: dict[str, bytes | None] = {}
        while self._pending:
            try:
                reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if reply is None:
                break
            name = reply.get("name")
            if name in self._pending:
                self._pending.remove(name)
                if "png" in reply:
                    drawn[name] = None if reply["png"] is None else base64.b64decode(reply["png"])
        return drawn

    def close(self) -> None:
        """End the worker without waiting for it: a ready one exits when its input closes (its interpreter's
        teardown, 0.06-0.11 s, is not the run's to wait for: the reader thread collects its exit); one still
        importing is killed, so that nothing is spent on an import that will not be used."""
        ready = self.ready
        try:
            self._process.stdin.close()
        except OSError:
            pass
        if not ready:
            self._process.kill()

    def wait_ended(self, timeout: float) -> int | None:
        """The worker's exit status once it has ended (None if it has not within ``timeout`` seconds)."""
        self._reader.join(timeout)
        return self._process.poll()


def serve() -> None:
    """The worker's side: import matplotlib, say ready, draw every job read until the input closes."""
    import signal

    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run decides when its figures stop
    from converge.report._figures import CURVES_FIGURE, figure_png
    import matplotlib.backends.backend_agg  # noqa: F401  what every figure draws with
    import matplotlib.figure  # noqa: F401

    # A figure drawn once first: the fonts, the text layout's caches and the layout engine are built now,
    # while the run trains, not at the end while the run waits (curves.png 0.3 s cold, 0.2 s warm).
    figure_png(CURVES_FIGURE, {"history": [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "lr": 0.1},
                                           {"epoch": 2, "train_loss": 0.001, "val_loss": 0.5, "lr": 0.01}],
                               "events": [], "best_epoch": 2, "monitor": "val_loss"})
    print(READY, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        try:
            png = figure_png(job["figure"], job["args"])
            reply = {"name": job["name"], "png": None if png is None else base64.b64encode(png).decode("ascii")}
        except Exception as exc:  # matplotlib's own errors have no common base class
            reply = {"name": job["name"], "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
