"""The library entry points: `fit` for objects in memory, `train_task` and `resume_run` for task files."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
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
from converge.engine import device as dev
from converge.engine.distributed import current_world
from converge.engine.loop import monitor_key
from converge.engine.objective import resolve_objective
from converge.io.runfolder import LR_FIND_PLOT, RUN_INFO, SUMMARY, TUNING_STAGES, RunFolder
from converge.tune import StageLog, choose_hyperparameters, plot_range_test
from converge.task import check_task_args, load_task

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
    checkpoint = _read_checkpoint(RunFolder(out)) if resume and Path(out, RUN_INFO).exists() else None
    if checkpoint:
        config = TrainConfig.from_dict(checkpoint[0]["config"]).with_values(max_epochs=config.max_epochs)
    writes = _writes_run_folder(config)
    folder = _FolderOnce(out if writes else None, force=force, resume=resume) if not checkpoint else _FolderOnce(None)
    trainer = _build_trainer(model, splits, config, loss=loss, metrics=metrics,
                             console=_console(writes, None, verbose), info=info, folder=folder)
    if checkpoint:
        continue_from(trainer, RunFolder.open_existing(out) if writes else None, *checkpoint)
    return trainer.run()


class _FolderOnce:
    """Creates the run folder when first asked: after the input has been checked (so bad input leaves
    nothing behind) and before tuning starts (so finished tuning stages can be saved in it)."""

    def __init__(self, out: str | Path | None, *, force: bool = False, resume: bool = False) -> None:
        self.out, self.force, self.resume = out, force, resume
        self.folder: RunFolder | None = None
        self.made = False

    def __call__(self, config: TrainConfig | None = None, info: dict | None = None) -> RunFolder | None:
        if not self.made and self.out is not None:
            # A resumed run that never reached its first checkpoint starts again in place, keeping the
            # tuning stages it had finished.
            self.folder = RunFolder.create(self.out, force=self.force or self.resume,
                                           keep=(TUNING_STAGES,) if self.resume else ())
            # At once, so that `converge resume` knows the task even if the run dies while tuning. It keeps
            # the options as given ("auto" included): a run resumed before its first checkpoint redoes
            # its tuning from the saved stages, exactly as the uninterrupted run did.
            self.folder.write_json(RUN_INFO, {"config": config.to_dict() if config else {}, **(info or {})})
        self.made = True
        return self.folder


def _build_trainer(model: nn.Module, splits: dict, config: TrainConfig, *, loss, metrics, console: Console,
                   info: dict, folder: _FolderOnce, epoch_judge: Callable | None = None) -> Trainer:
    """Check everything, make the run folder, choose the "auto" knobs, and build the Trainer."""
    tuning = None
    world = current_world(dev.pick_device(config.device))
    if config.auto_knobs and world is not None and not world.is_main:
        # Data-parallel: rank 0 tunes (on the whole data), the others take its choices.
        _checked_setup(model, splits, config, loss, metrics)
        tuning = _ChosenElsewhere(*world.object_from_main(None))
        config = tuning.config
    elif config.auto_knobs:
        device, on_device, objective = _checked_setup(model, splits, config, loss, metrics)
        monitor_key(config.monitor, objective.metric_fns)
        run_folder = folder(config, info)
        tuning = choose_hyperparameters(model, on_device, config, objective, device=device, console=console,
                                        log=_stage_log(run_folder))
        config = tuning.config
        chosen_test = tuning.range_tests.get(config.optimizer)
        if run_folder is not None and chosen_test is not None:
            plot_range_test(run_folder.path / LR_FIND_PLOT, chosen_test, config.lr)
        if world is not None:
            world.object_from_main((config, tuning.events, tuning.epochs))
    trainer = Trainer(model, splits, config, loss=loss, metrics=metrics, console=console, run_info=info,
                      tuning=tuning, epoch_judge=epoch_judge)
    trainer.folder = folder(config, info)
    return trainer


@dataclass
class _ChosenElsewhere:
    """Tuning done by rank 0 of a data-parallel run, as the other ranks receive it."""
    config: TrainConfig
    events: list
    epochs: float


def _writes_run_folder(config: TrainConfig) -> bool:
    """Under torchrun, join the process group first. True for a single process and for rank 0: the one
    process that writes the run folder and prints."""
    world = current_world(dev.pick_device(config.device))
    return world is None or world.is_main


def _console(writes: bool, console: Console | None, verbose: bool) -> Console:
    return (console or make_console(verbose)) if writes else Console()


def _checked_setup(model: nn.Module, splits: dict, config: TrainConfig, loss, metrics):
    """The device, the splits on it, and the objective (probe forward, label and shape checks)."""
    device = dev.pick_device(config.device)
    dev.check_amp(config.amp, device)
    model.to(device)
    on_device = {name: split.to(device) for name, split in splits.items()}
    objective = resolve_objective(model, on_device, loss, metrics or {}, amp=config.amp, device=device,
                                  probe_size=64)
    return device, on_device, objective


def _stage_log(folder: RunFolder | None) -> StageLog:
    if folder is None:
        return StageLog()
    stages = folder.read_json(TUNING_STAGES) if folder.exists(TUNING_STAGES) else {}
    return StageLog(stages, save=lambda values: folder.write_json(TUNING_STAGES, values))


def default_out(task_name: str) -> Path:
    base = Path("runs") / f"{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, number = base, 1
    while path.exists():  # two runs started in the same second get their own folders
        number += 1
        path = base.with_name(f"{base.name}-{number}")
    return path


def train_task(task_path: str | Path, *, out: str | Path | None = None, force: bool = False,
               verbose: bool = True, console: Console | None = None, task_args: dict | None = None,
               doctor: bool = True, fix: bool = False, drop_label_issues: bool = False, **options: Any) -> FitResult:
    """What `converge train TASK` does: load the task file, train, write the run folder. ``task_args``
    (``{"model": {...}, "data": {...}}``) are keyword arguments for the task's ``model()`` and ``data()``.
    ``doctor``: run the cheap checks of `converge doctor` first (warnings, doctor.json); ``fix``: standardize
    unscaled features and re-weight imbalanced classes; ``drop_label_issues``: leave out the training rows
    confident learning flags (see converge.doctor.remedies)."""
    task = load_task(task_path)
    options.setdefault("monitor", task.monitor)
    options.setdefault("mode", task.mode)
    config = make_config(**options)
    writes = _writes_run_folder(config)
    folder = _FolderOnce(out if out is not None else default_out(task.name), force=force) if writes \
        else _FolderOnce(None)
    remedies = {"check": doctor, "fix": fix, "drop_label_issues": drop_label_issues}
    trainer = _task_trainer(task, config, _console(writes, console, verbose), folder, task_args=task_args,
                            doctor=remedies)
    return _after_doctor(trainer.run(), trainer)


def _task_trainer(task, config: TrainConfig, console: Console, folder: _FolderOnce, *,
                  task_args: dict | None = None, epoch_judge: Callable | None = None,
                  doctor: dict | None = None, rerun_checks: bool = True) -> Trainer:
    task_args = check_task_args(task_args)
    seed_everything(config.seed)  # model initialisation and any randomness in data() follow the seed
    model = task.build_model(**task_args["model"])
    splits = make_splits(*task.build_data(**task_args["data"]), num_workers=config.num_workers)
    extra = {"task_args": task_args} if any(task_args.values()) else {}
    world = current_world()
    if world is not None:
        extra["world_size"] = world.size  # `converge resume` starts as many processes again
    loss, prepared = task.loss, None
    if doctor is not None:  # {"check", "fix", "drop_label_issues"} as the run was started with
        extra["doctor"] = {key: bool(doctor.get(key)) for key in ("check", "fix", "drop_label_issues")}
        doctor = {**extra["doctor"], "check": extra["doctor"]["check"] and rerun_checks}
    if doctor and any(doctor.values()):  # converge.doctor.in_train
        from converge.doctor.in_train import before_training

        _checked_setup(model, splits, config, task.loss, task.metrics)  # bad input fails before any finding
        prepared = before_training(model, splits, loss=task.loss, metrics=task.metrics, seed=config.seed,
                                   console=console, **doctor)
        splits, loss = prepared.splits, prepared.loss
    info = _run_info(name=task.name, task=str(task.path), task_sha256=task.sha256, **extra)
    trainer = _build_trainer(model, splits, config, loss=loss, metrics=task.metrics, console=console,
                             info=info, folder=folder, epoch_judge=epoch_judge)
    if prepared is not None:
        from converge.doctor.in_train import exporter, record

        record(trainer, prepared)
        trainer.doctor_prepared = prepared
        trainer.export_state = exporter(model, prepared)
    return trainer


def _after_doctor(result: FitResult, trainer: Trainer) -> FitResult:
    """Fold a `--fix` standardization into the exported weights (converge.doctor.in_train)."""
    prepared = getattr(trainer, "doctor_prepared", None)
    if prepared is None:
        return result
    from converge.doctor.in_train import after_training

    return after_training(result, prepared)


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
        config = config.with_values(max_epochs=max_epochs)
    writes = _writes_run_folder(config)
    console = _console(writes, console, verbose)
    if task.sha256 != info.get("task_sha256"):
        console.warning(f"{task.path} changed since the run started; results may differ")
    # Without a checkpoint the run stopped before its first epoch ended: it starts over in place,
    # keeping the tuning stages it had finished.
    # The checks run again only for a run that starts over (their events are in the checkpoint otherwise);
    # `--fix` remedies are applied again in any case, as the run started with them.
    trainer = _task_trainer(task, config, console,
                            _FolderOnce(None if checkpoint or not writes else folder.path, resume=True),
                            task_args=info.get("task_args"), doctor=info.get("doctor"),
                            rerun_checks=checkpoint is None)
    if checkpoint:
        continue_from(trainer, folder if writes else None, *checkpoint)
    return _after_doctor(trainer.run(), trainer)


def _read_checkpoint(folder: RunFolder) -> tuple | None:
    """The newest usable checkpoint, None when the run never wrote one, an error when all are corrupt."""
    if not any(folder.exists(name) for name in (CHECKPOINT, PREVIOUS)):
        return None
    try:
        return load_checkpoint(folder.path)
    except CheckpointError as exc:
        raise ConvergeError(f"cannot resume {str(folder.path)!r}: {exc}") from None


def continue_from(trainer: Trainer, folder: RunFolder | None, state: dict, source: Path, problems: list[str]) -> None:
    """Load a checkpoint into a freshly built trainer and put the run folder's logs back in step with it
    (``folder`` None: a data-parallel rank other than 0, which only loads the state)."""
    status, epoch = state["progress"]["status"], state["progress"]["epoch"]
    finished = status in ("converged", "diverged", "pruned") or (status == "max_epochs" and epoch >= trainer.config.max_epochs)
    # A run killed while writing its final files has a finished checkpoint but an older summary:
    # resuming it writes the final files again.
    summary = Path(source).parent / SUMMARY
    if finished and summary.exists() and json.loads(summary.read_text()).get("status") == status:
        hint = "; pass a larger --max-epochs to continue it" if status == "max_epochs" else ""
        raise ConvergeError(f"the run in {str(summary.parent)!r} already finished (status {status}){hint}")
    trainer.load_state_dict(state)
    if not finished:
        trainer.status, trainer.stop_reason = None, ""
    trainer.folder = folder
    if folder is not None:
        # The logs may hold lines written after the checkpoint; the checkpoint's copy is the truth.
        folder.metrics.rewrite(trainer.history)
        folder.events.rewrite(trainer.events)
    for problem in problems:
        trainer.console.warning(f"{problem}; using {source.name}")
        trainer._event("checkpoint_fallback", problem=problem, used=source.name)
    trainer._event("resumed", checkpoint=source.name, epoch_done=trainer.epoch, batch=trainer.batch)


def _run_info(**values: Any) -> dict:
    return {"converge_version": __version__, "torch_version": torch.__version__, **values}


def find_lr(task_path: str | Path, *, optimizer: str = "auto", batch_size: int | str = "auto",
            weight_decay: float | str = "auto", seed: int = 0, device: str | None = None, amp: str = "off",
            out: str | Path | None = None, force: bool = False) -> dict:
    """What `converge lr-find TASK` does: a range test per optimizer, its suggestion, and lr_find.png."""
    from converge.config import DEFAULT_WEIGHT_DECAY, OPTIMIZERS
    from converge.tune.auto import choose_batch_size
    from converge.tune.lr_find import lr_range_test, plot_range_test

    task = load_task(task_path)
    config = make_config(optimizer=optimizer, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                         device=device, amp=amp, monitor=task.monitor, mode=task.mode)
    seed_everything(config.seed)
    model = task.build_model()
    device_, splits, objective = _checked_setup(model, make_splits(*task.build_data()), config, task.loss,
                                                task.metrics)
    folder = RunFolder.create(out if out is not None else default_out(f"{task.name}-lr-find"), force=force)
    size = config.batch_size
    if size == "auto":
        size, _ = choose_batch_size(len(splits["train"]), model, splits["train"], objective, device_, config.amp)
    results = {}
    for opt in (OPTIMIZERS if config.optimizer == "auto" else (config.optimizer,)):
        decay = DEFAULT_WEIGHT_DECAY[opt] if config.weight_decay == "auto" else config.weight_decay
        test = lr_range_test(model, splits["train"], objective.loss_fn, optimizer=opt, weight_decay=decay,
                             batch_size=size, device=device_, amp=config.amp, seed=config.seed)
        plot_range_test(folder.path / (f"lr_find_{opt}.png" if len(results) else "lr_find.png"), test,
                        test.suggestion.lr)
        results[opt] = {**test.to_dict(), "weight_decay": decay}
    folder.write_json("lr_find.json", results)
    return {"run_dir": folder.path, "results": results}
