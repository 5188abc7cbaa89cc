"""What a person sees while a run trains: a live bar on a terminal, one live display in a Jupyter notebook,
one plain line per epoch otherwise.

The loop calls ``advance`` every few steps only (never per-step work that needs a device sync); values
shown are those of the last finished epoch."""

from __future__ import annotations

import html
import sys
import time
from typing import IO

NOTEBOOK_UPDATES_PER_SECOND = 2   # a display update is a message to the browser: few, not one per advance
NOTEBOOK_EPOCH_LINES = 12         # the newest epoch lines the live display shows


def _format_value(value) -> str:
    if value is None:
        return "nan"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_epoch(record: dict, notes: list[str]) -> str:
    parts = [f"epoch {record['epoch']}"]
    for key, value in record.items():
        if key in ("epoch", "step", "seconds"):
            continue
        parts.append(f"{key} {value:.3g}" if key == "lr" else f"{key} {_format_value(value)}")
    parts.append(f"{record['seconds']:.2f}s")
    line = "  ".join(parts)
    return line + (f"  [{', '.join(notes)}]" if notes else "")


class Console:
    """Silent base: the sink for ``verbose=False``."""

    def start(self, max_epochs: int) -> None: ...
    def start_epoch(self, epoch: int, batches: int | None, completed: int = 0) -> None: ...
    def advance(self, steps: int) -> None: ...
    def end_epoch(self, record: dict, notes: list[str]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...

    def warning(self, text: str) -> None:
        """Warnings reach stderr even when the console is quiet."""
        print(f"warning: {text}", file=sys.stderr, flush=True)


class PlainConsole(Console):
    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def end_epoch(self, record: dict, notes: list[str]) -> None:
        print(format_epoch(record, notes), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class RichConsole(Console):
    def __init__(self) -> None:
        from rich.console import Console as RichOut
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.out = RichOut()
        self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[last]}"),
                                 console=self.out, transient=True, refresh_per_second=4)
        self.task = None
        self.last = ""

    def start(self, max_epochs: int) -> None:
        self.progress.start()

    def start_epoch(self, epoch: int, batches: int | None, completed: int = 0) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("train", total=batches, completed=completed, epoch=epoch,
                                           last=self.last)

    def advance(self, steps: int) -> None:
        self.progress.advance(self.task, steps)

    def end_epoch(self, record: dict, notes: list[str]) -> None:
        line = format_epoch(record, notes)
        self.last = "  ".join(line.split("  ")[1:4])
        style = "bold green" if "new best" in notes else ""
        self.progress.console.print(line, style=style, highlight=False)

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def close(self) -> None:
        self.progress.stop()


class NotebookConsole(Console):
    """One display in the notebook's output, updated in place: the epoch in progress and the newest epoch
    lines (a notebook keeps every printed line: a run of many epochs would otherwise bury the page)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.epoch, self.total, self.done = 0, None, 0
        self.handle = None
        self._shown_at = 0.0

    def start(self, max_epochs: int) -> None:
        from IPython.display import HTML, display

        self.max_epochs = max_epochs
        self.handle = display(HTML(self._html()), display_id=True)

    def start_epoch(self, epoch: int, batches: int | None, completed: int = 0) -> None:
        self.epoch, self.total, self.done = epoch, batches, completed
        self._show()

    def advance(self, steps: int) -> None:
        self.done += steps
        if time.monotonic() - self._shown_at >= 1 / NOTEBOOK_UPDATES_PER_SECOND:
            self._show()

    def end_epoch(self, record: dict, notes: list[str]) -> None:
        self.lines.append(format_epoch(record, notes))
        self._show()

    def message(self, text: str) -> None:
        self.lines.append(text)
        self._show()

    def close(self) -> None:
        self.total = self.done = None  # the run is over: no bar
        self._show()

    def _show(self) -> None:
        if self.handle is not None:
            from IPython.display import HTML

            self.handle.update(HTML(self._html()))
            self._shown_at = time.monotonic()

    def _html(self) -> str:
        shown = self.lines[-NOTEBOOK_EPOCH_LINES:]
        earlier = len(self.lines) - len(shown)
        head = f"… {earlier} earlier line(s)\n" if earlier else ""
        bar = ""
        if self.done is not None and self.epoch:
            of = f"/{self.total}" if self.total else ""
            value = f" value='{self.done}' max='{self.total}'" if self.total else ""
            bar = (f"<div>epoch {self.epoch}: <progress{value}></progress> {self.done}{of} batches</div>")
        text = html.escape(head + "\n".join(shown))
        return f"<div class='converge-progress'>{bar}<pre style='margin:4px 0'>{text}</pre></div>"


def in_jupyter() -> bool:
    """Whether this runs in a Jupyter kernel (IPython's ZMQ shell), where a display can be updated in place."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    # By class name through the MRO: importing ipykernel to test isinstance would cost every terminal run,
    # and hosted notebooks (Colab) subclass the shell.
    return any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


def make_console(verbose: bool, stream: IO[str] | None = None) -> Console:
    if not verbose:
        return Console()
    if stream is None and in_jupyter():
        return NotebookConsole()
    stream = stream or sys.stdout
    if stream.isatty():
        return RichConsole()
    return PlainConsole(stream)
