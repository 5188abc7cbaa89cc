"""The run's record: what a person sees and what the run folder holds.

The Trainer decides and trains; it tells its recorder what happened, and the recorder keeps the history
and the event log (both part of the checkpoint), prints the epoch lines, appends to metrics.jsonl and
events.jsonl, writes TensorBoard events, hands checkpoints and best weights to the folder's background
writer, and at the end writes curves.png, report.html and, last, summary.json. Without a run folder
(``folder=None``: `converge.fit(out=None)`, a data-parallel rank other than 0, a tuning race arm) it
only keeps the record in memory and prints.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from converge.console import Console
from converge.decide.cadence import checkpoint_due, estimated_cost
from converge.errors import StorageError
from converge.lazy import preload
from converge.io.atomic import atomic_write_bytes
from converge.io.checkpoint import state_bytes
from converge.engine.loss_parameters import loss_part, model_part
from converge.io.runfolder import (BEST_WEIGHTS, CURVES, EVENTS, LOSS_PARAMETERS, REPORT, SUMMARY, TENSORBOARD_DIR,
                                   RunFolder)
from converge.io.weights import write_weights
from converge.report._figures import CURVES_FIGURE, figure_png
from converge.report.figure_process import FigureProcess

# The figure process starts once the run has trained this long: it is ready 0.6 s after (matplotlib's import,
# on an idle core), and a run that ends sooner draws in its own process.
FIGURE_PROCESS_AFTER = 1.0
FIGURE_PROCESS_WAIT = 10.0  # seconds the end waits for the figure process's PNGs before drawing them itself


class RunRecorder:
    def __init__(self, folder: RunFolder | None = None, console: Console | None = None, *,
                 run_info: dict | None = None, events: list[dict] | tuple = (),
                 export_state: Callable[[dict], dict] | None = None, tensorboard: bool = False,
                 mlflow: bool = False) -> None:
        """``events``: what happened before training (tuning choices, doctor findings), logged first.
        ``export_state``: what best.safetensors holds, from the best state (`--fix` folds its input
        standardization into the first layer so the exported model takes raw inputs).
        ``run_info``: facts about the run (task, versions) that end up in summary.json."""
        self.folder = folder
        self.console = console or Console()
        self.run_info = dict(run_info or {})
        self.export_state = export_state
        self.history: list[dict] = []
        self.events: list[dict] = list(events)
        self._tensorboard_wanted = tensorboard
        self._tensorboard = None
        self._mlflow_wanted = mlflow
        self._mlflow = None
        self._last_checkpoint = time.monotonic()
        self._seconds_per_byte: float | None = None  # what the last checkpoint cost the training loop, per byte
        self._expected_cost: float | None = None     # seconds the next one will cost, from the last state seen
        self._checkpoints_written = 0                # by this process
        self._end_figures: dict[str, tuple[str, dict]] = {}  # file name -> (figure, its args), drawn by the end
        self._figures_sent: set[str] = set()
        self._figure_process: FigureProcess | None = None
        self._figure_process_tried = False
        self._trained_seconds = 0.0  # the epochs this process recorded

    @property
    def run_dir(self):
        return self.folder.path if self.folder is not None else None

    # --- during the run ------------------------------------------------------------------------------
    def start(self, first_epoch: int, *, fresh: bool, step: int = 0, params: dict | None = None) -> None:
        """Before the loop. A ``fresh`` run's log starts with the events that came before training.
        ``params``: the options, for MLflow."""
        if self._mlflow_wanted and self._mlflow is None:
            self._start_mlflow(first_epoch - 1, step, params or {})
        if self.folder is None:
            return
        if fresh:
            self.folder.events.rewrite(self.events)
        if self._tensorboard_wanted and self._tensorboard is None:
            from converge.io.tensorboard import TensorBoardLog

            self._tensorboard = TensorBoardLog(self.folder.path / TENSORBOARD_DIR, first_epoch=first_epoch)

    def _start_mlflow(self, epoch: int, step: int, params: dict) -> None:
        from converge.io.mlflow_log import MlflowLog

        earlier = next((e for e in reversed(self.events) if e.get("event") == "mlflow_run"), None)
        name = self.run_info.get("name") or "converge"
        self._mlflow = MlflowLog(experiment=f"converge-{name}", run_name=str(self.run_dir or name),
                                 params={**params, **{k: v for k, v in self.run_info.items() if k != "config"}},
                                 run_id=earlier["run_id"] if earlier else None)
        if earlier is None:
            self.event("mlflow_run", epoch=epoch, step=step, run_id=self._mlflow.run_id,
                       tracking=self._mlflow.shown_uri)
        self.console.message(f"mlflow: run {self._mlflow.run_id} at {self._mlflow.shown_uri}")

    def event(self, kind: str, /, *, epoch: int, step: int, **values) -> dict:
        event = {"event": kind, "epoch": epoch, "step": step, **values}
        self.events.append(event)
        if self.folder is not None:
            self.folder.events.append(event)
        return event

    def add_epoch(self, record: dict) -> None:
        """An epoch's values, as soon as they are known (the decisions read the history)."""
        self.history.append(record)

    def publish_epoch(self, record: dict, notes: list[str]) -> None:
        """The epoch's line on the console and in the logs, once its decisions are made."""
        self.console.end_epoch(record, notes)
        if self.folder is not None:
            self.folder.metrics.append(record)
        if self._tensorboard is not None:
            # The first epoch also carries what happened before training (tuning choices, doctor findings).
            epoch = record["epoch"]
            self._tensorboard.log_epoch(record, [e for e in self.events if e.get("epoch") == epoch
                                                 or (epoch == 1 and e.get("epoch") == 0)])
        if self._mlflow is not None:
            self._mlflow.log_epoch(record)
        self._trained_seconds += record.get("seconds") or 0.0
        self._tend_figure_process()

    def _tend_figure_process(self) -> None:
        """Once the run has trained ``FIGURE_PROCESS_AFTER`` seconds, start the process that will draw its
        figures (`converge.report.figure_process`); once it is ready, send it what can be drawn already.
        A shorter run draws in its own process at the end: the worker would not be ready in time."""
        if self.folder is None:
            return
        if self._figure_process is None:
            if not self._figure_process_tried and self._trained_seconds >= FIGURE_PROCESS_AFTER:
                self._figure_process_tried = True
                self._figure_process = FigureProcess.start()
            return
        for name, (figure, args) in self._end_figures.items():
            if name not in self._figures_sent and self._figure_process.submit(name, figure, args):
                self._figures_sent.add(name)

    def save_best(self, best_state: dict[str, torch.Tensor]) -> None:
        """best.safetensors, made and written in the background (``best_state`` is a snapshot: never changed
        in place, so the writer may read it later); the parameters of a loss that holds some go to
        loss_parameters.safetensors."""
        if self.folder is not None:
            export = self.export_state
            weights, loss = model_part(best_state), loss_part(best_state)
            self.folder.write_later(BEST_WEIGHTS, lambda path: write_weights(
                path, export(weights) if export is not None else weights))
            if loss:
                self.folder.write_later(LOSS_PARAMETERS, lambda path: write_weights(path, loss))

    def checkpoint_due(self, *, floor: float = 0.0, state: dict | None = None) -> bool:
        """Whether a checkpoint is due now: its cost is kept to a small share of the training time
        (`converge.decide.cadence`); ``floor``: the fewest seconds since the last one. ``state``: the
        checkpoint about to be written: its size at what the last one cost per byte is the cost expected
        (kept: asks inside an epoch have no state)."""
        if state is not None:
            self._expected_cost = estimated_cost(state_bytes(state), self._seconds_per_byte)
        return checkpoint_due(time.monotonic() - self._last_checkpoint, self._expected_cost, floor=floor)

    def save_checkpoint(self, state: dict, *, wait: bool = False, settled: bool = False) -> bool:
        """Hand ``state`` to the folder's writer (see `RunFolder.write_checkpoint_later`, and its ``settled``);
        False when it was skipped because the previous checkpoint is still being written."""
        if self.folder is None:
            return False
        started = time.monotonic()
        if not self.folder.write_checkpoint_later(state, wait=wait, settled=settled):
            return False
        self._last_checkpoint = time.monotonic()
        if not settled:  # a settled one costs the loop nothing: it says nothing of the next one's cost
            # A process's first checkpoint also pays one-time costs (the pickler's per-class caches: 0.2 s of a
            # 0.2 s checkpoint on a small model, measured), so its cost is no evidence of what the next will
            # cost: until a second one, the size at the guessed rate stands.
            if self._checkpoints_written:
                nbytes = max(state_bytes(state), 1)
                self._seconds_per_byte = (self._last_checkpoint - started) / nbytes
                self._expected_cost = self._seconds_per_byte * nbytes
            self._checkpoints_written += 1
        return True

    # --- resume --------------------------------------------------------------------------------------
    def load(self, history: list[dict], events: list[dict]) -> None:
        """The record as a checkpoint holds it. The folder's logs may hold lines written after that
        checkpoint: they are rewritten from it, the truth."""
        self.history = [dict(r) for r in history]
        self.events = [dict(e) for e in events]
        if self.folder is not None:
            self.folder.metrics.rewrite(self.history)
            self.folder.events.rewrite(self.events)

    # --- the end -------------------------------------------------------------------------------------
    def finish(self, summary: dict, best_state: dict | None, monitor: str) -> dict:
        """Write the run's final files and return the summary with the run's facts added. ``best_state``
        None (an interrupted run) leaves best.safetensors as the last new best wrote it."""
        summary = {**summary, **{k: v for k, v in self.run_info.items() if k not in summary}}
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self.folder is None:
            self._finish_mlflow(summary)
            return summary
        if best_state is not None:
            self.save_best(best_state)
        curves = self._draw_figures(summary.get("best_epoch"), monitor)
        self.folder.flush()
        self._write_report(summary, curves)
        self.folder.write_json(SUMMARY, summary)  # last: a final summary means every file is complete
        self._finish_mlflow(summary)
        return summary

    def _finish_mlflow(self, summary: dict) -> None:
        if self._mlflow is not None:
            self._mlflow.finish(summary, self.folder.path if self.folder is not None else None,
                                [SUMMARY, EVENTS, REPORT, CURVES, BEST_WEIGHTS])
            self._mlflow = None

    def draw_at_finish(self, name: str, figure: str, args: dict) -> None:
        """Have the run write the figure ``figure`` drawn from ``args`` (`converge.report._figures.figure_png`)
        as ``name`` by its end (a stop or an interruption, before the report). Not sooner in the run's own
        process: on a writer thread beside training, importing matplotlib and drawing held the interpreter's
        lock through the first epoch (an LSTM's first epoch 1.0 s instead of 0.15 s); the figure process, once
        ready, draws it during training. A figure that cannot be drawn costs the run nothing but a warning (its
        data is in the run folder's files); one that cannot be written fails like the run's other files."""
        if self.folder is not None:
            self._end_figures[name] = (figure, args)

    def _draw_figures(self, best_epoch: int | None, monitor: str) -> bytes | None:
        """Write the end figures and curves.png, the report's figure (loss, metrics and LR against epoch, every
        decision marked), and return the curves' PNG. The figure process draws what it can within
        ``FIGURE_PROCESS_WAIT`` seconds; this process draws the rest."""
        curves_args = {"history": self.history, "events": self.events, "best_epoch": best_epoch, "monitor": monitor}
        drawn: dict[str, bytes | None] = {}
        if self._figure_process is not None and self._figure_process.ready:
            self._tend_figure_process()
            if self._figure_process.submit(CURVES, CURVES_FIGURE, curves_args):
                self._figures_sent.add(CURVES)
            drawn = self._figure_process.collect(FIGURE_PROCESS_WAIT)
        self._close_figure_process()
        if not {*self._end_figures, CURVES} <= set(drawn):  # some are drawn here: import as `preload` says why
            preload("matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.ticker",
                    "matplotlib.legend", "matplotlib.transforms")
        for name, (figure, args) in self._end_figures.items():
            try:
                png = drawn[name] if name in drawn else figure_png(figure, args)
            except Exception as exc:  # matplotlib's own errors have no common base class
                self.console.warning(f"could not draw {name} ({type(exc).__name__}: {exc})")
                continue
            self._write_png(name, png)
        self._end_figures = {}
        curves = drawn[CURVES] if CURVES in drawn else figure_png(CURVES_FIGURE, curves_args)
        self._write_png(CURVES, curves)
        return curves

    def _write_png(self, name: str, png: bytes | None) -> None:
        if png is not None:
            with self.folder.writing(name):
                atomic_write_bytes(self.folder.path / name, png)

    def _close_figure_process(self) -> None:
        if self._figure_process is not None:
            self._figure_process.close()
            self._figure_process = None

    def _write_report(self, summary: dict, curves: bytes | None = None) -> None:
        try:
            from converge.report.html import write_report

            with self.folder.writing(REPORT):
                write_report(self.folder.path, summary=summary, curves_png=curves)
        except StorageError:  # a full disk: summary.json, next, could not be written either; resume ends it
            raise
        except Exception as exc:  # the report is derived from files already safe; it must not cost the run
            self.console.warning(f"could not write report.html ({type(exc).__name__}: {exc}); "
                                 f"try `converge report {self.folder.path}`")

    def close(self) -> None:
        """End the figure process; wait for the background writes (their errors surface here)."""
        self._close_figure_process()
        if self.folder is not None:
            self.folder.close()
