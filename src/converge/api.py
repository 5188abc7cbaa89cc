"""The library entry points: `fit` for a model and data in memory, `train_task` and `resume_run` for task
files, `find_lr` for the range test alone. Each one checks its arguments and hands over to
`converge.assembly`, which builds the run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from torch import nn

from converge.assembly import (Output, assemble, assemble_task, build_task, check_not_finished, default_out,
                               make_config, read_checkpoint, run_info, standardized_setup)
from converge.config import LR_FACTOR, TrainConfig
from converge.console import Console
from converge.data import make_splits
from converge.engine.distributed import writes_run_folder
from converge.engine.result import FitResult
from converge.engine.optim import OPTIMIZERS
from converge.errors import ConvergeError
from converge.io.runfolder import LR_FIND_DATA, RUN_INFO, RunFolder, lr_find_plot
from converge.task import load_task


def fit(model: nn.Module, train: Any, val: Any, test: Any = None, *,
        loss: Callable | None = None, metrics: dict[str, Callable] | None = None, target_key: str = "labels",
        optimizer: str = "auto", lr: float | str = "auto", weight_decay: float | str = "auto",
        batch_size: int | str = "auto", warmup_steps: int = 0, max_epochs: int = 1000, patience: int = 5,
        lr_factor: float = LR_FACTOR, min_lr: float | None = None, cooldown: int = 0, threshold: float = 1e-3,
        unproductive_cuts: int = 1, monitor: str = "val_loss", mode: str | None = None, seed: int = 0,
        device: str | None = None, amp: str = "off", clip_grad: float | None = None, accumulate: int = 1,
        checkpoint_seconds: float = 300.0, num_workers: int = 0, steps_per_epoch: int | None = None,
        guard: bool = True, max_rollbacks: int = 5,
        tensorboard: bool = False, mlflow: bool = False, standardize: bool = True,
        out: str | Path | None = None, force: bool = False,
        resume: bool = False,
        verbose: bool = True) -> FitResult:
    """Train ``model`` to convergence on ``train``, validating on ``val`` after every epoch; ``test`` (optional)
    is evaluated once, with the best weights. Each split is an ``(inputs, targets)`` pair of tensors or
    arrays, a Dataset or a DataLoader. Returns a `FitResult` whose model holds the best weights.

    The objective: ``loss(outputs, targets)`` and ``metrics`` ({name: fn(outputs, targets)}); left out, the
    loss is inferred from the shapes of the targets and the outputs (see docs/task-files.md).
    ``target_key``: the entry of dict batches (or of a dict split) that holds the targets.

    The options, in the order of `converge train`'s flags (see the table in docs/cli.md):

    - ``optimizer`` ("adamw", "sgd" or "auto"), ``lr``, ``weight_decay``, ``batch_size``: "auto" lets converge
      choose (an LR range test and a short race on validation); ``warmup_steps``: linear LR warmup.
    - ``max_epochs``: hard cap. ``patience``: epochs without significant progress before the LR is cut by
      ``lr_factor``, never below ``min_lr`` (default 1e-3 x the LR); ``cooldown``: epochs after a cut that
      do not count; ``threshold``: the relative improvement that counts as progress; ``unproductive_cuts``:
      LR cuts without progress before the run has converged.
    - ``monitor`` / ``mode``: the value that decides ("val_loss", or a metric with ``mode="max"``).
    - ``seed``: model order, data order and dropout; ``device``: "cpu", "cuda", "cuda:N" (None: CUDA when
      present); ``amp``: "off", "bf16" or "fp16"; ``clip_grad``: max gradient norm; ``accumulate``:
      micro-batches per step; ``checkpoint_seconds``: checkpoint inside long epochs this often;
      ``num_workers``: DataLoader workers for Dataset splits; ``steps_per_epoch``: batches per epoch of a
      streamed training split (an IterableDataset; default 200).
    - ``guard``: roll back NaN and loss spikes (and cut the LR), at most ``max_rollbacks`` in a row;
      ``tensorboard``: also write TensorBoard event files into the run folder; ``mlflow``: also log to MLflow
      (``MLFLOW_TRACKING_URI``, else a local store in ./mlruns).
    - ``standardize``: when the training inputs are one float feature matrix [N, F] far from standardized
      (the doctor's scale check), train on z = (x - mean) / std with training-split statistics, folded into
      the model's first nn.Linear so the returned model and best.safetensors take raw inputs (said in one
      console line and in remedies.json); False leaves the inputs as they are.
    - ``out``: the run folder (None: nothing is written); ``force``: overwrite converge's files there;
      ``resume``: continue the run in ``out`` (same model, data and options); ``verbose``: print progress.
    """
    started = time.monotonic()
    if not isinstance(model, nn.Module):
        raise ConvergeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = TrainConfig(optimizer=optimizer, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                         warmup_steps=warmup_steps, max_epochs=max_epochs, patience=patience, lr_factor=lr_factor,
                         min_lr=min_lr, cooldown=cooldown, threshold=threshold, unproductive_cuts=unproductive_cuts,
                         monitor=monitor, mode=mode, seed=seed, device=device, amp=amp, clip_grad=clip_grad,
                         accumulate=accumulate, checkpoint_seconds=checkpoint_seconds, num_workers=num_workers,
                         steps_per_epoch=steps_per_epoch, guard=guard, max_rollbacks=max_rollbacks,
                         tensorboard=tensorboard, mlflow=mlflow, standardize=standardize)
    splits = make_splits(train, val, test, config.num_workers, target_key=target_key,
                         steps_per_epoch=config.steps_per_epoch, missing_targets=loss is not None)
    if resume and out is None:
        raise ConvergeError("resume=True needs the run folder: pass out=...")
    held = RunFolder.open_existing(out, lock=writes_run_folder()) \
        if resume and Path(out, RUN_INFO).exists() else None  # the lock first
    try:
        checkpoint = read_checkpoint(held) if held is not None else None
        if checkpoint is not None:
            config = TrainConfig.from_dict(checkpoint.state["config"]).with_values(max_epochs=config.max_epochs)
            check_not_finished(checkpoint, config.max_epochs)
        run = assemble(model, splits, config, loss=loss, metrics=metrics, verbose=verbose, target_key=target_key,
                       output=Output(out, force=force, restart=resume), info=run_info(name=type(model).__name__),
                       checkpoint=checkpoint, started=started)
        return run.run()
    finally:
        if held is not None:
            held.close()


def train_task(task_path: str | Path, *, out: str | Path | None = None, force: bool = False,
               verbose: bool = True, console: Console | None = None, task_args: dict | None = None,
               doctor: bool = True, fix: bool = False, drop_label_issues: bool = False, **options: Any) -> FitResult:
    """What `converge train TASK` does: load the task file, train, write the run folder. ``options`` are
    `fit`'s (the task file's own ``monitor`` and ``mode`` apply unless given). ``task_args``
    (``{"model": {...}, "data": {...}}``) are keyword arguments for the task's ``model()`` and ``data()``.
    ``doctor``: run the cheap checks of `converge doctor` first (warnings, doctor.json); ``fix``: standardize
    unscaled features and re-weight imbalanced classes; ``drop_label_issues``: leave out the training rows
    confident learning flags (see docs/doctor.md)."""
    started = time.monotonic()
    task = load_task(task_path, seed=options.get("seed", 0))
    options.setdefault("monitor", task.monitor)
    options.setdefault("mode", task.mode)
    config = make_config(**options)
    run = assemble_task(task, config, output=Output(out if out is not None else default_out(task.name), force=force),
                        console=console, verbose=verbose, task_args=task_args,
                        doctor={"check": doctor, "fix": fix, "drop_label_issues": drop_label_issues},
                        started=started)
    return run.run()


def resume_run(run_dir: str | Path, *, max_epochs: int | None = None, verbose: bool = True,
               console: Console | None = None) -> FitResult:
    """What `converge resume DIR` does: continue a run from its newest usable checkpoint (a run that never
    reached one starts over in place, keeping the tuning stages it had finished)."""
    started = time.monotonic()
    # Holds the folder's lock from here on; under torchrun rank 0 holds it for every rank (on every node).
    folder = RunFolder.open_existing(run_dir, lock=writes_run_folder())
    try:
        return _resume(folder, run_dir, started, max_epochs=max_epochs, verbose=verbose, console=console)
    finally:
        folder.close()


def _resume(folder: RunFolder, run_dir, started: float, *, max_epochs: int | None, verbose: bool,
            console: Console | None) -> FitResult:
    info = folder.read_json(RUN_INFO)
    if "task" not in info:
        raise ConvergeError(f"{str(run_dir)!r} was written by converge.fit(); resume it from Python with "
                            "fit(..., out=..., resume=True)")
    checkpoint = read_checkpoint(folder)
    config = TrainConfig.from_dict(checkpoint.state["config"] if checkpoint else info["config"])
    task = load_task(info["task"], seed=config.seed)
    if max_epochs is not None:
        config = config.with_values(max_epochs=max_epochs)
    if checkpoint is not None:
        check_not_finished(checkpoint, config.max_epochs)
    if task.sha256 != info.get("task_sha256"):
        (console or Console()).warning(f"{task.path} changed since the run started; results may differ")
    # The checks run again only for a run that starts over (their events are in the checkpoint otherwise);
    # `--fix` remedies are applied again in any case, as the run started with them.
    run = assemble_task(task, config, output=Output(folder.path, restart=checkpoint is None), console=console,
                        verbose=verbose, task_args=info.get("task_args"), doctor=info.get("doctor"),
                        checkpoint=checkpoint, rerun_checks=checkpoint is None, started=started)
    return run.run()


def find_lr(task_path: str | Path, *, optimizer: str = "auto", batch_size: int | str = "auto",
            weight_decay: float | str = "auto", seed: int = 0, device: str | None = None, amp: str = "off",
            out: str | Path | None = None, force: bool = False, standardize: bool = True) -> dict:
    """What `converge lr-find TASK` does: a range test per optimizer, its suggestion, and lr_find.png. The
    inputs are standardized as `converge train` would (``standardize``), so the suggestion is for them."""
    from converge.choose.auto import choose_batch_size
    from converge.choose.lr_find import lr_range_test, plot_range_test

    task = load_task(task_path, seed=seed)
    config = make_config(optimizer=optimizer, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                         device=device, amp=amp, monitor=task.monitor, mode=task.mode, standardize=standardize)
    model, splits, _ = build_task(task, config)
    setup = standardized_setup(task, model, splits, config)
    folder = RunFolder.create(out if out is not None else default_out(f"{task.name}-lr-find"), force=force)
    size = config.batch_size
    if size == "auto":
        size, _ = choose_batch_size(len(setup.splits["train"]), model, setup.splits["train"], setup.objective,
                                    setup.device, config.amp)
    results = {}
    for name in (OPTIMIZERS if config.optimizer == "auto" else (config.optimizer,)):
        decay = OPTIMIZERS[name].default_weight_decay if config.weight_decay == "auto" else config.weight_decay
        test = lr_range_test(model, setup.splits["train"], setup.objective, optimizer=name,
                             weight_decay=decay, batch_size=size, device=setup.device, amp=config.amp,
                             seed=config.seed)
        plot_range_test(folder.path / lr_find_plot(name, first=not results), test, test.suggestion.lr)
        results[name] = {**test.to_dict(), "weight_decay": decay}
    folder.write_json(LR_FIND_DATA, results)
    return {"run_dir": folder.path, "results": results}
