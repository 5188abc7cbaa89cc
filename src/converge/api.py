"""The library entry points: `fit` for objects in memory, `train_task` and `resume_run` for task files."""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from converge import __version__
from converge.config import TrainConfig
from converge.console import Console, make_console
from converge.data import make_splits
from converge.engine.loop import FitResult, Trainer
from converge.rng import seed_everything
from converge.errors import ConvergeError
from converge.io.checkpoint import CHECKPOINT, PREVIOUS, CheckpointError, load_checkpoint
from converge.io.runfolder import RUN_INFO, SUMMARY, RunFolder
from converge.task import load_task

_CONFIG_FIELDS = {f.name for f in fields(TrainConfig)}


def make_config(**options: Any) -> TrainConfig:
    unknown = sorted(set(options) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_CONFIG_FIELDS))}")
    return TrainConfig(**{k: v for k, v in options.items() if v is not None})


def fit(model: nn.Module, train: Any, val: Any, test: Any = None, *, loss: Callable | None = None,
        metrics: dict[str, Callable] | None = None, out: str | Path | None = None, force: bool = False,
        resume: bool = False, verbose: bool = True, **options: Any) -> FitResult:
    """Train ``model`` to convergence on ``train``, validating on ``val`` after every epoch.

    Options are the fields of :class:`TrainConfig` (``optimizer``, ``lr``, ``weight_decay``,
    ``batch_size``, ``max_epochs``, ``patience``, ``seed``, ``device``, ``monitor``, ``mode``, ``amp``,
    ``clip_grad``, ``accumulate``, ...). With ``out``, the run folder is written there (and the run can
    be resumed with ``resume=True`` and the same model, data and options); without it nothing is
    written to disk. The returned model holds the best weights.
    """
    if not isinstance(model, nn.Module):
        raise ConvergeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = make_config(**options)
    splits = make_splits(train, val, test, config.num_workers)
    if resume and out is None:
        raise ConvergeError("resume=True needs the run folder: pass out=...")
    info = _run_info(name=type(model).__name__)
    trainer = Trainer(model, splits, config, loss=loss, metrics=metrics, console=make_console(verbose),
                      run_info=info)
    checkpoint = _read_checkpoint(RunFolder(out)) if resume and Path(out, RUN_INFO).exists() else None
    if checkpoint:
        continue_from(trainer, RunFolder.open_existing(out), *checkpoint)
    elif out is not None:
        trainer.folder = RunFolder.create(out, force=force or resume)
    return trainer.run()


def default_out(task_name: str) -> Path:
    base = Path("runs") / f"{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, number = base, 1
    while path.exists():  # two runs started in the same second get their own folders
        number += 1
        path = base.with_name(f"{base.name}-{number}")
    return path


def train_task(task_path: str | Path, *, out: str | Path | None = None, force: bool = False,
               verbose: bool = True, console: Console | None = None, **options: Any) -> FitResult:
    """What `converge train TASK` does: load the task file, train, write the run folder."""
    task = load_task(task_path)
    options.setdefault("monitor", task.monitor)
    options.setdefault("mode", task.mode)
    config = make_config(**options)
    trainer = _task_trainer(task, config, console or make_console(verbose), folder=None)
    trainer.folder = RunFolder.create(out if out is not None else default_out(task.name), force=force)
    return trainer.run()


def _task_trainer(task, config: TrainConfig, console: Console, folder: RunFolder | None) -> Trainer:
    seed_everything(config.seed)  # model initialisation and any randomness in data() follow the seed
    model = task.build_model()
    splits = make_splits(*task.build_data(), num_workers=config.num_workers)
    info = _run_info(name=task.name, task=str(task.path), task_sha256=task.sha256)
    return Trainer(model, splits, config, loss=task.loss, metrics=task.metrics, folder=folder,
                   console=console, run_info=info)


def resume_run(run_dir: str | Path, *, max_epochs: int | None = None, verbose: bool = True,
               console: Console | None = None) -> FitResult:
    """What `converge resume DIR` does: continue a run from its newest usable checkpoint."""
    folder = RunFolder.open_existing(run_dir)
    info = folder.read_json(RUN_INFO)
    if "task" not in info:
        raise ConvergeError(f"{str(run_dir)!r} was written by converge.fit(); resume it from Python with "
                            "fit(..., out=..., resume=True)")
    checkpoint = _read_checkpoint(folder)
    task = load_task(info["task"])
    config = TrainConfig.from_dict(checkpoint[0]["config"] if checkpoint else info["config"])
    if max_epochs is not None:
        config = TrainConfig.from_dict({**config.to_dict(), "max_epochs": max_epochs})
    console = console or make_console(verbose)
    if task.sha256 != info.get("task_sha256"):
        console.warning(f"{task.path} changed since the run started; results may differ")
    trainer = _task_trainer(task, config, console, folder=None)
    if checkpoint:
        continue_from(trainer, folder, *checkpoint)
    else:  # stopped before its first checkpoint: nothing was kept, so the run starts over in place
        trainer.folder = RunFolder.create(folder.path, force=True)
    return trainer.run()


def _read_checkpoint(folder: RunFolder) -> tuple | None:
    """The newest usable checkpoint, None when the run never wrote one, an error when all are corrupt."""
    if not any(folder.exists(name) for name in (CHECKPOINT, PREVIOUS)):
        return None
    try:
        return load_checkpoint(folder.path)
    except CheckpointError as exc:
        raise ConvergeError(f"cannot resume {str(folder.path)!r}: {exc}") from None


def continue_from(trainer: Trainer, folder: RunFolder, state: dict, source: Path, problems: list[str]) -> None:
    """Load a checkpoint into a freshly built trainer and put the run folder's logs back in step with it."""
    status, epoch = state["progress"]["status"], state["progress"]["epoch"]
    finished = status in ("converged", "diverged") or (status == "max_epochs" and epoch >= trainer.config.max_epochs)
    # A run killed while writing its final files has a finished checkpoint but an older summary:
    # resuming it writes the final files again.
    if finished and folder.exists(SUMMARY) and folder.read_json(SUMMARY).get("status") == status:
        hint = "; pass a larger --max-epochs to continue it" if status == "max_epochs" else ""
        raise ConvergeError(f"the run in {str(folder.path)!r} already finished (status {status}){hint}")
    trainer.load_state_dict(state)
    if not finished:
        trainer.status, trainer.stop_reason = None, ""
    trainer.folder = folder
    # The logs may hold lines written after the checkpoint; the checkpoint's copy is the truth.
    folder.metrics.rewrite(trainer.history)
    folder.events.rewrite(trainer.events)
    for problem in problems:
        trainer.console.warning(f"{problem}; using {source.name}")
        trainer._event("checkpoint_fallback", problem=problem, used=source.name)
    trainer._event("resumed", checkpoint=source.name, epoch_done=trainer.epoch, batch=trainer.batch)


def _run_info(**values: Any) -> dict:
    return {"converge_version": __version__, "torch_version": torch.__version__, **values}
