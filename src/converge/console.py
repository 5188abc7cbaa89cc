"""What a person sees while a run trains: a live bar on a terminal, one plain line per epoch otherwise.

The loop calls ``advance`` every few steps only (never per-step work that needs a device sync); values
shown are those of the last finished epoch."""

from __future__ import annotations

import sys
from typing import IO


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


def make_console(verbose: bool, stream: IO[str] | None = None) -> Console:
    if not verbose:
        return Console()
    stream = stream or sys.stdout
    if stream.isatty():
        return RichConsole()
    return PlainConsole(stream)
