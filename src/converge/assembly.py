"""Assembling a run: from (a task file, or a model and data in memory, and the options) to a ready Trainer.

`converge.api` (fit, train_task, resume_run, find_lr) and `converge.tune.search` (one trial) both go
through here. The steps, in order; bad input fails at the first of them, before anything is written:

1. set-up: the device, the splits on it, the objective (a probe forward; label and shape checks);
2. the doctor's quick checks and the remedies asked for (task files), which may change the splits
   and the loss, and the default standardization of unscaled feature matrices (``config.standardize``;
   a resumed run standardizes exactly when its checkpoint says it did);
3. the run folder (created only now, so bad input leaves nothing behind) with run.json, doctor.json
   and remedies.json;
4. the automatic choice of every "auto" knob (`converge.choose.auto`; its finished stages are saved in
   the folder, so a run killed while tuning does not tune twice);
5. the recorder (what the run leaves behind) and the Trainer;
6. resume: the checkpoint's state loaded, the logs put back in step with it.

Under torchrun only rank 0 writes and prints; the other ranks take rank 0's tuning choices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from converge._version import __version__
from converge.config import TrainConfig
from converge.console import Console, make_console
from converge.data import TARGET_KEY, in_model_precision, make_splits
from converge.engine import device as dev
from converge.engine.distributed import World, current_world
from converge.engine.loop import Trainer
from converge.engine.result import FitResult
from converge.decide.task_kind import IGNORE_INDEX
from converge.engine.objective import Objective, monitor_key, resolve_objective
from converge.engine.recorder import RunRecorder
from converge.errors import ConvergeError
from converge.io.checkpoint import CHECKPOINT, PREVIOUS, CheckpointError, load_checkpoint
from converge.io.runfolder import (BEST_WEIGHTS, LR_FIND_PLOT, RUN_INFO, SUMMARY, TUNING_STAGES, RunFolder,
                                   read_json_object)
from converge.io.weights import weights_readable
from converge.report._figures import RANGE_TEST_FIGURE
from converge.rng import seed_everything
from converge.status import Status, is_final
from converge.task import Task, check_task_args
from converge.choose.auto import StageLog, Tuning, choose_hyperparameters
from converge.choose.lr_find import RangeTest

DOCTOR_OPTIONS = ("check", "fix", "drop_label_issues")


# --- options and places ------------------------------------------------------------------------------
_CONFIG_FIELDS = {f.name for f in fields(TrainConfig)}


def make_config(**options: Any) -> TrainConfig:
    """A TrainConfig from keyword options; None means "the default"."""
    unknown = sorted(set(options) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_CONFIG_FIELDS))}")
    return TrainConfig(**{k: v for k, v in options.items() if v is not None})


def default_out(task_name: str) -> Path:
    """runs/<task>-<time>, numbered when two runs start in the same second."""
    base = Path("runs") / f"{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, number = base, 1
    while path.exists():
        number += 1
        path = base.with_name(f"{base.name}-{number}")
    return path


@dataclass(frozen=True)
class Output:
    """Where a run writes. ``path`` None: nowhere. ``force``: replace converge's files in an existing
    folder. ``restart``: a resumed run that never reached its first checkpoint starts over in place,
    keeping the tuning stages it had finished."""

    path: Path | str | None
    force: bool = False
    restart: bool = False


@dataclass(frozen=True)
class Checkpoint:
    """The newest usable checkpoint of a run folder, where it came from, and what was wrong on the way."""

    state: dict
    source: Path
    problems: list[str]


def read_checkpoint(folder: RunFolder) -> Checkpoint | None:
    """None when the run never wrote a checkpoint; an error when every checkpoint is corrupt."""
    if not any(folder.exists(name) for name in (CHECKPOINT, PREVIOUS)):
        return None
    try:
        return Checkpoint(*load_checkpoint(folder.path))
    except CheckpointError as exc:
        raise ConvergeError(f"cannot resume {str(folder.path)!r}: {exc}") from None


def check_not_finished(checkpoint: Checkpoint, max_epochs: int) -> None:
    """Refuse to resume a run that is over. A run killed while writing its final files has a final
    checkpoint but an older summary; one whose summary.json or best.safetensors was damaged afterwards is
    in the same case: resuming it writes the final files again, from the checkpoint."""
    progress = checkpoint.state["progress"]
    status = progress["status"]
    folder = checkpoint.source.parent
    summary = read_json_object(folder / SUMMARY) or {}
    if is_final(status, progress["epoch"], max_epochs) and summary.get("status") == status and \
            weights_readable(folder / BEST_WEIGHTS):
        hint = "; pass a larger --max-epochs to continue it" if status == Status.MAX_EPOCHS else ""
        raise ConvergeError(f"the run in {str(folder)!r} already finished (status {status}){hint}")


def run_info(**values: Any) -> dict:
    """What summary.json and run.json say about the run besides its results."""
    return {"converge_version": __version__, "torch_version": torch.__version__, **values}


# --- the steps -------------------------------------------------------------------------------------
@dataclass
class Setup:
    device: torch.device
    splits: dict          # on the device
    objective: Objective


def checked_setup(model: nn.Module, splits: dict, config: TrainConfig, loss: Callable | None,
                  metrics: dict | None, ignore_index: int = IGNORE_INDEX, target_key: str = TARGET_KEY) -> Setup:
    """The device, the splits on it, and the objective (probe forward, label and shape checks). The model
    moves to the device."""
    device = dev.pick_device(config.device)
    dev.check_amp(config.amp, device)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConvergeError(f"the model ({type(model).__name__}) has no trainable parameters")
    model.to(device)
    on_device = {name: split.to(device) for name, split in splits.items()}
    objective = resolve_objective(model, on_device, loss, metrics or {}, amp=config.amp, device=device,
                                  probe_size=64, ignore_index=ignore_index, target_key=target_key)
    monitor_key(config.monitor, objective)
    return Setup(device, on_device, objective)


@dataclass
class Run:
    """A Trainer ready to go, and what the doctor must do once it is done."""

    trainer: Trainer
    prepared: Any = None   # converge.doctor.in_train.Prepared, when the doctor ran

    def run(self, *, on_trained: Callable[[Trainer], None] | None = None) -> FitResult:
        """Train; ``on_trained(trainer)`` is called after training, while the trainer's model still takes the
        inputs it trained on (before the doctor folds a standardization into it)."""
        result = self.trainer.run()
        if on_trained is not None:
            on_trained(self.trainer)
        if self.prepared is None:
            return result
        from converge.doctor.in_train import after_training

        return after_training(result, self.prepared)


def assemble(model: nn.Module, splits: dict, config: TrainConfig, *, loss: Callable | None = None,
             metrics: dict | None = None, output: Output = Output(None), console: Console | None = None,
             verbose: bool = True, info: dict | None = None, doctor: dict | None = None,
             epoch_judge: Callable[[dict], str | None] | None = None,
             checkpoint: Checkpoint | None = None, ignore_index: int = IGNORE_INDEX,
             target_key: str = TARGET_KEY, started: float | None = None) -> Run:
    """Steps 1-6 above. ``doctor``: {"check", "fix", "drop_label_issues"} (None: no doctor).
    ``checkpoint``: continue from it, in the existing folder ``output.path``. ``ignore_index``: the
    padding label of integer targets. ``started``: when the command started (``time.monotonic()``; default
    now), for the run's wall time."""
    started = time.monotonic() if started is None else started
    world = current_world(dev.pick_device(config.device))
    main = world is None or world.is_main
    console = (console or make_console(verbose)) if main else Console()
    if world is not None and getattr(splits["train"], "stream", False):
        raise ConvergeError("data-parallel training cannot cut a stream (an IterableDataset) into one part per "
                            "process; give a map-style Dataset or tensors, or train in one process")
    splits = in_model_precision(model, splits)
    setup = checked_setup(model, splits, config, loss, metrics, ignore_index, target_key)
    prepared = _prepare(model, splits, config, doctor, checkpoint, loss=loss, metrics=metrics, console=console,
                        ignore_index=ignore_index, target_key=target_key, objective=setup.objective)
    if prepared is not None and (prepared.splits is not splits or prepared.loss is not loss):
        setup = checked_setup(model, prepared.splits, config, prepared.loss, metrics, ignore_index, target_key)
    setup = _in_user_units(setup, prepared)
    folder = _open_folder(output, config, info or {}, checkpoint) if main else None
    override = "a `loss` (in the task file, or fit(loss=...)) overrides it" if loss is None else "as given"
    console.message(f"task: {setup.objective.description}; {override}")
    events = []
    if config.auto_knobs:
        tuning = _choose(model, setup, config, console, folder, world)
        config, events = tuning.config, list(tuning.events)
    else:
        tuning = None
    export = None
    if prepared is not None:
        from converge.doctor import in_train

        events += in_train.events_of(prepared)
        export = in_train.exporter(model, prepared)
        if folder is not None:
            in_train.save(folder, prepared)
    recorder = RunRecorder(folder, console, run_info=info, events=events, export_state=export,
                           tensorboard=config.tensorboard, mlflow=config.mlflow and main)
    if main and (tuning is not None or checkpoint is not None):
        _range_test_figure(recorder, folder, config)
    trainer = Trainer(model, setup.splits, config, setup.objective, recorder=recorder, epoch_judge=epoch_judge,
                      tuning_epochs=tuning.epochs if tuning is not None else 0.0, started=started)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint.state)
        for problem in checkpoint.problems:
            console.warning(f"{problem}; using {checkpoint.source.name}")
            trainer.add_event("checkpoint_fallback", problem=problem, used=checkpoint.source.name)
        trainer.add_event("resumed", checkpoint=checkpoint.source.name, epoch_done=trainer.epoch,
                          batch=trainer.in_epoch.batch)
    return Run(trainer, prepared)


def _prepare(model: nn.Module, splits: dict, config: TrainConfig, doctor: dict | None, checkpoint: Checkpoint | None,
             **options: Any):
    """The doctor's checks and remedies before training (`converge.doctor.in_train`), and the default
    standardization of unscaled feature matrices (``config.standardize``). A resumed run standardizes
    exactly when it did at its start (the decision is a `remedy` event in the checkpoint). None when
    there is nothing to do."""
    doctor = dict(doctor or {})
    recorded = None
    if checkpoint is not None:
        from converge.doctor.in_train import recorded_standardization, recorded_target_standardization

        events = checkpoint.state.get("logs", {}).get("events", [])
        recorded = recorded_standardization(events)
        options["recorded_targets"] = recorded_target_standardization(events) or {"applied": False}
    targets_recorded = bool(options.get("recorded_targets", {}).get("applied"))
    if not (any(doctor.values()) or config.standardize or recorded or targets_recorded):
        return None
    from converge.doctor.in_train import before_training

    return before_training(model, splits, seed=config.seed, standardize=config.standardize, recorded=recorded,
                           monitor=config.monitor,
                           check=bool(doctor.get("check")), fix=bool(doctor.get("fix")),
                           drop_label_issues=bool(doctor.get("drop_label_issues")), **options)


def _in_user_units(setup: Setup, prepared) -> Setup:
    """The set-up whose objective reports in the targets' units when the doctor standardized them."""
    if prepared is None or prepared.target_standardization is None:
        return setup
    return Setup(setup.device, setup.splits, replace(setup.objective, target_scale=prepared.target_standardization))


def _open_folder(output: Output, config: TrainConfig, info: dict, checkpoint: Checkpoint | None) -> RunFolder | None:
    if output.path is None:
        return None
    if checkpoint is not None:
        return RunFolder.open_existing(output.path)
    folder = RunFolder.create(output.path, force=output.force or output.restart,
                              keep=(TUNING_STAGES,) if output.restart else ())
    # At once, so that `converge resume` knows the task even if the run dies while tuning. It keeps the
    # options as given ("auto" included): a run resumed before its first checkpoint redoes its tuning from
    # the saved stages, exactly as the uninterrupted run did.
    folder.write_json(RUN_INFO, {"config": config.to_dict(), **info})
    return folder


def _choose(model: nn.Module, setup: Setup, config: TrainConfig, console: Console, folder: RunFolder | None,
            world: World | None) -> Tuning:
    """Choose the "auto" knobs. Data-parallel: rank 0 chooses (on the whole data), the others take its
    choices."""
    if world is not None and not world.is_main:
        chosen, events, epochs = world.object_from_main(None)
        return Tuning(chosen, epochs, events)
    tuning = choose_hyperparameters(model, setup.splits, config, setup.objective, device=setup.device,
                                    console=console, log=_stage_log(folder, console))
    if world is not None:
        world.object_from_main((tuning.config, tuning.events, tuning.epochs))
    return tuning


def _range_test_figure(recorder: RunRecorder, folder: RunFolder | None, config: TrainConfig) -> None:
    """lr_find.png, drawn at the run's end (`RunRecorder.draw_at_finish`) from the chosen optimizer's range
    test in tuning.json: also for a run resumed after a kill, until the figure is in the folder."""
    if folder is None or folder.exists(LR_FIND_PLOT) or not folder.exists(TUNING_STAGES):
        return
    saved = (read_json_object(folder.path / TUNING_STAGES) or {}).get(f"range_test_{config.optimizer}")
    if not isinstance(saved, dict):
        return
    try:
        test = RangeTest.from_dict(saved)
    except (KeyError, TypeError, ValueError):  # a damaged stage: the figure is left out, the run goes on
        return
    recorder.draw_at_finish(LR_FIND_PLOT, RANGE_TEST_FIGURE, test.figure_args(config.lr))


def _stage_log(folder: RunFolder | None, console: Console) -> StageLog:
    """The finished tuning stages of a run killed while tuning. Damaged ones are set aside (renamed, never
    deleted) and tuning starts again: it is deterministic, so the run still ends as it would have."""
    if folder is None:
        return StageLog()
    stages = {}
    if folder.exists(TUNING_STAGES):
        stages = read_json_object(folder.path / TUNING_STAGES)
        if stages is None:
            aside = folder.path / f"{TUNING_STAGES}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            (folder.path / TUNING_STAGES).replace(aside)
            console.warning(f"{folder.path / TUNING_STAGES} cannot be read; set aside as {aside.name}, "
                            f"choosing the hyperparameters again")
            stages = {}
    return StageLog(stages, save=lambda values: folder.write_json(TUNING_STAGES, values))


# --- task files ------------------------------------------------------------------------------------
def build_task(task: Task, config: TrainConfig, task_args: dict | None = None) -> tuple[nn.Module, dict, dict]:
    """The task's model and splits, built with the run's seed (model initialisation and any randomness in
    data() follow it), and its checked arguments."""
    task_args = check_task_args(task_args)
    seed_everything(config.seed)
    model = task.build_model(**task_args["model"])
    splits = make_splits(*task.build_data(**task_args["data"]), num_workers=config.num_workers,
                         target_key=task.target_key, steps_per_epoch=config.steps_per_epoch,
                         missing_targets=task.loss is not None)
    return model, splits, task_args


def assemble_task(task: Task, config: TrainConfig, *, output: Output, console: Console | None = None,
                  verbose: bool = True, task_args: dict | None = None, doctor: dict | None = None,
                  epoch_judge: Callable[[dict], str | None] | None = None,
                  checkpoint: Checkpoint | None = None, rerun_checks: bool = True,
                  started: float | None = None) -> Run:
    """A run of a task file. ``doctor`` as the run was started with (it is recorded in run.json, so a
    resumed run applies the same remedies); ``rerun_checks`` False: a resumed run whose checkpoint already
    holds the checks' findings does not run them again."""
    started = time.monotonic() if started is None else started
    model, splits, task_args = build_task(task, config, task_args)
    extra: dict = {"task_args": task_args} if any(task_args.values()) else {}
    world = current_world()
    if world is not None:
        extra["world_size"] = world.size  # `converge resume` starts as many processes again
    if doctor is not None:
        extra["doctor"] = {key: bool(doctor.get(key)) for key in DOCTOR_OPTIONS}
        doctor = {**extra["doctor"], "check": extra["doctor"]["check"] and rerun_checks}
    info = run_info(name=task.name, task=str(task.path), task_sha256=task.sha256, **extra)
    return assemble(model, splits, config, loss=task.loss, metrics=task.metrics, output=output, console=console,
                    verbose=verbose, info=info, doctor=doctor, epoch_judge=epoch_judge, checkpoint=checkpoint,
                    ignore_index=task.ignore_index, target_key=task.target_key, started=started)


def standardized_setup(task: Task, model: nn.Module, splits: dict, config: TrainConfig) -> Setup:
    """The checked set-up of a task on the inputs `converge train` trains on: with the default
    standardization of unscaled feature matrices (``config.standardize``), nothing printed or written."""
    setup = checked_setup(model, splits, config, task.loss, task.metrics, task.ignore_index, task.target_key)
    prepared = _prepare(model, splits, config, None, None, loss=task.loss, metrics=task.metrics, console=Console(),
                        ignore_index=task.ignore_index, target_key=task.target_key, objective=setup.objective)
    if prepared is None or prepared.splits is splits:
        return setup
    return _in_user_units(checked_setup(model, prepared.splits, config, task.loss, task.metrics, task.ignore_index,
                                        task.target_key), prepared)


def automatic_choice(task: Task, config: TrainConfig) -> Tuning:
    """What `converge train TASK` would choose for the "auto" knobs of ``config``, with nothing written or
    printed (the warm start of `converge tune`)."""
    model, splits, _ = build_task(task, config)
    setup = standardized_setup(task, model, splits, config)
    return choose_hyperparameters(model, setup.splits, config, setup.objective, device=setup.device)
