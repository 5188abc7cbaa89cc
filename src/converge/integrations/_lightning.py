"""The Lightning callback, built for whichever Lightning package the user trains with (``lightning`` or
``pytorch_lightning``: a Trainer only accepts callbacks of its own package's ``Callback`` class).

Events → `converge.Monitor` calls:

* fit start: the module's one optimizer (and its schedule, when a cut can ride on it) is checked;
* train start: with ``lr="auto"``, converge's LR range test on the module's own training step chooses the
  LR (`converge.decide.lr_suggest` judges the sweep, as for `converge train --lr auto`); then a ``Monitor``;
* each training batch's loss → ``Monitor.after_batch`` (the divergence guard);
* the end of a training epoch that ran validation → ``Monitor.step`` (best weights, LR cuts, the stop);
* fit end → ``Monitor.finish`` (the best weights back in the module, the diagnosis, the run folder).

A stop is ``trainer.should_stop = True``: Lightning ends the fit after the epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from converge.decide.lr_suggest import suggest_lr, usable_prefix
from converge.engine.guard import copied
from converge.errors import ConvergeError
from converge.integrations._options import check_mode, decision_options, restart_option, run_folder
from converge.monitor import Monitor
from converge.status import Status


def make_callback(pl):
    """The ``ConvergeCallback`` class for the Lightning package ``pl`` (``lightning.pytorch`` or
    ``pytorch_lightning``)."""

    class ConvergeCallback(pl.Callback):
        """converge's decisions for a Lightning fit. Add it to ``Trainer(callbacks=[...])``; it then cuts the LR
        of the module's optimizer when ``monitor`` (a value the module logs in validation) plateaus, stops the
        fit once the plateau survives a cut, keeps the best weights and loads them at the end, rolls a NaN or
        a loss spike back (``guard``), and writes the run folder (``summary.json``, ``metrics.jsonl``,
        ``events.jsonl``, ``curves.png``, ``report.html``, ``best.safetensors``) to ``out``, by default the
        trainer's log dir. ``result_`` is then what `converge.fit` returns.

        ``configure_optimizers`` returns one optimizer, alone or with a ``LambdaLR`` schedule (each cut
        scales its base LRs); any other scheduler is refused with one line: converge cuts the LR itself.
        ``lr="auto"``: before the first epoch, converge's LR range test sweeps the LR on the module's own
        ``training_step`` (its logging silenced, weights and optimizer put back after) and the optimizer
        starts at the LR it suggests (each parameter group keeps its ratio to the first).
        Other options (``patience``, ``factor``, ``min_lr``, ...) are `converge.Monitor`'s.
        """

        def __init__(self, *, monitor: str = "val_loss", mode: str = "min", guard: bool = True,
                     out: str | Path | None = None, force: bool = False, restore_best: bool = True,
                     lr: str | None = None, **options) -> None:
            if lr not in (None, "auto"):
                raise ValueError(f"lr must be None (the optimizer's own) or 'auto' (a range test), got {lr!r}")
            self.monitor, self.mode, self.guard, self.lr = monitor, check_mode(mode), guard, lr
            self.out, self.force, self.restore_best = out, force, restore_best
            self.options = decision_options(options, "ConvergeCallback")
            self.monitor_: Monitor | None = None
            self.result_ = None
            self._validated = False
            self._pending_state: dict | None = None

        # --- the start ----------------------------------------------------------------------------
        def on_fit_start(self, trainer, pl_module) -> None:
            _, scheduler = _optimizer_and_schedule(trainer)  # refused before the sanity check, not after it
            if self.lr == "auto" and scheduler is not None:
                raise ConvergeError("ConvergeCallback(lr='auto') chooses the optimizer's LR, which a schedule "
                                    "would not follow: return the optimizer alone, or leave lr unset")
            self.result_ = None

        def on_train_start(self, trainer, pl_module) -> None:
            optimizer, scheduler = _optimizer_and_schedule(trainer)
            chosen = _choose_lr(trainer, pl_module, optimizer) if self.lr == "auto" and not self._pending_state \
                else None
            default = trainer.log_dir if trainer.log_dir is not None else trainer.default_root_dir
            out, force = run_folder(self.out, self.force, default)
            # Each process judges its own slice's losses: a rollback on one rank alone would leave the ranks'
            # weights apart, so with several processes the guard stays off (the Trainer's shares a window).
            guard = self.guard and trainer.world_size == 1
            self.monitor_ = Monitor(pl_module, optimizer, mode=self.mode, monitor=self.monitor, guard=guard,
                                    scheduler=scheduler, out=out if trainer.is_global_zero else None, force=force,
                                    run_info={"framework": pl.__name__.split(".")[0],
                                              "name": type(pl_module).__name__},
                                    **restart_option(self.options, self.restore_best, trainer.world_size))
            if chosen is not None:
                self.monitor_.add_event("chose_lr", value=chosen.lr, optimizer=type(optimizer).__name__,
                                        reason=chosen.reason)
            if self._pending_state is not None:  # a fit resumed from a Lightning checkpoint
                self.monitor_.load_state_dict(self._pending_state)
                self._pending_state = None

        # --- during the fit -----------------------------------------------------------------------
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            if isinstance(loss, torch.Tensor):
                self.monitor_.after_batch(loss)
                trainer.should_stop = trainer.should_stop or self.monitor_.stopped

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self._validated = True

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if not self._validated or self.monitor_.stopped:
                return  # no validation this epoch (check_val_every_n_epoch): nothing to judge
            self._validated = False
            values = _scalars(trainer.callback_metrics)
            if self.monitor not in values:
                raise ConvergeError(f"ConvergeCallback monitors {self.monitor!r}, which the LightningModule does not "
                                    f"log (it logs {sorted(values) or 'nothing'}): self.log({self.monitor!r}, ...) in "
                                    f"validation_step, or pass monitor=")
            if self.monitor_.step(values[self.monitor], values=values):
                trainer.should_stop = True

        # --- the end ------------------------------------------------------------------------------
        def on_fit_end(self, trainer, pl_module) -> None:
            if self.monitor_ is None or self.result_ is not None:
                return
            limit = f"reached the Trainer's max_epochs {trainer.max_epochs} before converging" \
                if trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs \
                else "the Trainer stopped before converging (max_steps, max_time or another callback)"
            self.result_ = self.monitor_.finish(reason=limit, max_epochs=trainer.max_epochs,
                                                restore_best=self.restore_best)

        def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
            if self.monitor_ is not None and self.result_ is None and self.monitor_.record.folder is not None:
                self.result_ = self.monitor_.finish(status=Status.INTERRUPTED,
                                                    reason=f"stopped by {type(exception).__name__}: {exception}")

        # --- state (Lightning keeps it in its checkpoints) -------------------------------------------
        def state_dict(self) -> dict:
            return self.monitor_.state_dict() if self.monitor_ is not None else {}

        def load_state_dict(self, state_dict: dict) -> None:
            if state_dict:  # applied at fit start, once the optimizer exists
                self._pending_state = state_dict

    ConvergeCallback.__module__ = f"converge.integrations.{pl.__name__.split('.')[0]}"
    return ConvergeCallback


def _optimizer_and_schedule(trainer):
    """The one optimizer converge drives and the schedule its cuts ride on (None); anything else refused."""
    optimizers = trainer.optimizers
    if len(optimizers) != 1:
        raise ConvergeError(f"ConvergeCallback drives one optimizer; configure_optimizers returned {len(optimizers)}")
    configs = trainer.lr_scheduler_configs
    if len(configs) > 1:
        raise ConvergeError(f"ConvergeCallback cuts the LR itself; configure_optimizers returned {len(configs)} "
                            f"schedulers: return the optimizer alone, or with one LambdaLR")
    scheduler = configs[0].scheduler if configs else None
    if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise ConvergeError(f"ConvergeCallback cuts the LR itself and cannot share it with a "
                            f"{type(scheduler).__name__}: return the optimizer alone from configure_optimizers "
                            f"(or with a LambdaLR, whose base LRs carry the cuts)")
    return optimizers[0], scheduler


# The sweep of `converge lr-find` and `--lr auto` (converge.choose.lr_find.lr_range_test): 1e-7 to 10 in at
# most 100 optimizer steps, stopped once the loss diverges.
SWEEP_START_LR, SWEEP_END_LR, SWEEP_STEPS, DIVERGE_FACTOR = 1e-7, 10.0, 100, 4.0


def _choose_lr(trainer, module, optimizer):
    """converge's LR range test on the module's own training step; the optimizer then starts at the
    suggested LR. Returns the `LrSuggestion`, or raises a ConvergeError when the sweep gives no evidence."""
    loader = trainer.train_dataloader
    if not isinstance(loader, Iterable):
        raise ConvergeError("ConvergeCallback(lr='auto') needs one training DataLoader to sweep the LR on")
    ratios = [float(group["lr"]) / float(optimizer.param_groups[0]["lr"] or 1.0) for group in optimizer.param_groups]
    kept = copied({"model": module.state_dict(), "optimizer": optimizer.state_dict()}, "cpu")
    lrs, losses = [], []
    growth = (SWEEP_END_LR / SWEEP_START_LR) ** (1 / (SWEEP_STEPS - 1))
    was_training = module.training
    module.train()
    # The sweep's steps are not the run's: nothing they log may reach the run's metrics.
    module.log = module.log_dict = lambda *args, **kwargs: None
    try:
        for index, batch in enumerate(_endless(loader)):
            lr = SWEEP_START_LR * growth ** index
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            output = module.training_step(trainer.strategy.batch_to_device(batch), index)
            loss = output.get("loss") if isinstance(output, Mapping) else output
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lrs.append(lr)
            losses.append(float(loss.detach()))  # the sweep stops at divergence: a sync per step
            if usable_prefix(lrs, losses, DIVERGE_FACTOR) < len(lrs) or len(lrs) >= SWEEP_STEPS:
                break
    finally:
        del module.log, module.log_dict
        module.load_state_dict(kept["model"])
        optimizer.load_state_dict(kept["optimizer"])
        module.train(was_training)
    suggestion = suggest_lr(lrs, losses, diverge_factor=DIVERGE_FACTOR)
    if not suggestion.ok:
        raise ConvergeError(f"ConvergeCallback(lr='auto'): the LR range test gave no LR ({suggestion.reason}); "
                            f"set the LR in configure_optimizers instead")
    for group, ratio in zip(optimizer.param_groups, ratios):
        group["lr"] = suggestion.lr * ratio
    return suggestion


def _endless(loader: Iterable):
    """The loader's batches, epoch after epoch (a sweep may need more steps than one epoch has)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


def _scalars(metrics: Mapping) -> dict[str, float]:
    """The logged values that are single numbers (one host read each, once per epoch)."""
    values = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            values[name] = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[name] = float(value)
    return values
