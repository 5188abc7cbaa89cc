"""The Lightning callback, built for whichever Lightning package the user trains with (``lightning`` or
``pytorch_lightning``: a Trainer only accepts callbacks of its own package's ``Callback`` class).

Events → `converge.Monitor` calls:

* fit start: the module's one optimizer (and its schedule, when a cut can ride on it) → a ``Monitor``;
* each training batch's loss → ``Monitor.after_batch`` (the divergence guard);
* the end of a training epoch that ran validation → ``Monitor.step`` (best weights, LR cuts, the stop);
* fit end → ``Monitor.finish`` (the best weights back in the module, the diagnosis, the run folder).

A stop is ``trainer.should_stop = True``: Lightning ends the fit after the epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from converge.errors import ConvergeError
from converge.integrations._options import check_mode, decision_options, run_folder
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
        Other options (``patience``, ``factor``, ``min_lr``, ...) are `converge.Monitor`'s.
        """

        def __init__(self, *, monitor: str = "val_loss", mode: str = "min", guard: bool = True,
                     out: str | Path | None = None, force: bool = False, restore_best: bool = True,
                     **options) -> None:
            self.monitor, self.mode, self.guard = monitor, check_mode(mode), guard
            self.out, self.force, self.restore_best = out, force, restore_best
            self.options = decision_options(options, "ConvergeCallback")
            self.monitor_: Monitor | None = None
            self.result_ = None
            self._validated = False
            self._pending_state: dict | None = None

        # --- the start ----------------------------------------------------------------------------
        def on_fit_start(self, trainer, pl_module) -> None:
            optimizer, scheduler = _optimizer_and_schedule(trainer)
            default = trainer.log_dir if trainer.log_dir is not None else trainer.default_root_dir
            out, force = run_folder(self.out, self.force, default)
            self.monitor_ = Monitor(pl_module, optimizer, mode=self.mode, monitor=self.monitor, guard=self.guard,
                                    scheduler=scheduler, out=out if trainer.is_global_zero else None, force=force,
                                    run_info={"framework": pl.__name__.split(".")[0]}, **self.options)
            if self._pending_state is not None:  # a fit resumed from a Lightning checkpoint
                self.monitor_.load_state_dict(self._pending_state)
                self._pending_state = None
            self.result_ = None

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


def _scalars(metrics: Mapping) -> dict[str, float]:
    """The logged values that are single numbers (one host read each, once per epoch)."""
    values = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            values[name] = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[name] = float(value)
    return values
