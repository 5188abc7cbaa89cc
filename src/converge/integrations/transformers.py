"""`ConvergeCallback` for the Hugging Face ``Trainer``.

Events → `converge.Monitor` calls:

* train begin: the Trainer's optimizer and its LR schedule (a ``LambdaLR``, as every Trainer schedule but
  ``reduce_lr_on_plateau`` is) → a ``Monitor`` whose cuts scale the schedule's base LRs;
* each optimizer step → ``Monitor.after_batch`` with the step's training loss (the divergence guard); the
  Trainer hands callbacks no loss, so a forward hook on the model keeps the ``loss`` its outputs carry;
* each evaluation (every epoch, or every ``eval_steps``) → ``Monitor.step``;
* train end → ``Monitor.finish``: the best weights back in the model, the diagnosis, the run folder.

A stop is ``control.should_training_stop = True``.

The default linear decay goes on under converge: the LR at a step is the schedule's value times the cuts
made so far (each cut scales the base LRs), so a cut lowers the rest of the decay, and the decay still
reaches 0 at ``num_train_epochs``. A plateau while the decayed LR is at its floor (1e-3 of the base LR by
default) stops the run at once, since no cut could help.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from converge.errors import ConvergeError
from converge.integrations._options import check_mode, decision_options, restart_option, run_folder
from converge.monitor import Monitor

# The Trainer's evaluation entries that are costs, not results.
_NOT_RESULTS = ("runtime", "samples_per_second", "steps_per_second", "epoch")


class ConvergeCallback(transformers.TrainerCallback):
    """converge's decisions for a ``transformers.Trainer``: add it to ``Trainer(callbacks=[...])`` with an
    evaluation strategy (``eval_strategy="epoch"`` or ``"steps"``). It cuts the LR when ``monitor`` (an
    evaluation metric; ``"val_loss"`` is the Trainer's ``eval_loss``, ``"val_accuracy"`` its
    ``eval_accuracy``) plateaus, stops training once the plateau survives a cut, keeps the best weights in
    memory and loads them at the end, rolls a NaN or a loss spike back (``guard``; it needs the model's
    outputs to carry a ``loss``, as a Hugging Face model given labels does), and writes the run folder to
    ``out``, by default the Trainer's ``output_dir``. ``result_`` is then what `converge.fit` returns.
    Other options (``patience``, ``factor``, ``min_lr``, ...) are `converge.Monitor`'s.
    """

    def __init__(self, *, monitor: str = "val_loss", mode: str = "min", guard: bool = True,
                 out: str | Path | None = None, force: bool = False, restore_best: bool = True, **options) -> None:
        self.monitor = "val_" + monitor[len("eval_"):] if monitor.startswith("eval_") else monitor
        if not self.monitor.startswith("val_"):
            raise ValueError(f"monitor names an evaluation metric, val_<name> (the Trainer's eval_<name>), "
                             f"got {monitor!r}")
        self.mode, self.guard = check_mode(mode), guard
        self.out, self.force, self.restore_best = out, force, restore_best
        self.options = decision_options(options, "ConvergeCallback")
        self.monitor_: Monitor | None = None
        self.result_ = None
        self._hook = None
        self._step_losses: list[torch.Tensor] = []     # this step's micro-batch losses, on the device
        self._loss_sum: torch.Tensor | None = None     # since the last evaluation, on the device
        self._loss_count = 0

    # --- the start --------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if str(getattr(args, "eval_strategy", "no")) in ("no", "IntervalStrategy.NO"):
            raise ConvergeError("ConvergeCallback judges each evaluation: set eval_strategy='epoch' (or 'steps') "
                                "in TrainingArguments")
        out, force = run_folder(self.out, self.force, args.output_dir)
        # Each process would judge its own slice's losses, and a rollback on one rank alone leaves the ranks'
        # weights apart: with several processes the guard stays off.
        guard = self.guard and args.world_size == 1
        self.monitor_ = Monitor(model, optimizer, mode=self.mode, monitor=self.monitor, guard=guard,
                                scheduler=lr_scheduler, out=out if state.is_world_process_zero else None,
                                force=force, run_info={"framework": "transformers", "name": type(model).__name__},
                                **restart_option(self.options, self.restore_best, args.world_size))
        self.result_ = None
        self._hook = model.register_forward_hook(self._keep_loss)
        self._loss_sum, self._loss_count, self._step_losses = None, 0, []

    def _keep_loss(self, module, inputs, outputs) -> None:
        """The training loss the model computed (no sync: the tensor is kept, detached)."""
        if not module.training:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._step_losses.append(loss.detach().float())

    # --- during training --------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor_ is None or not self._step_losses:
            return
        loss = torch.stack(self._step_losses).mean()  # the step's micro-batches (gradient accumulation)
        self._step_losses = []
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_count += 1
        self.monitor_.after_batch(loss)
        if self.monitor_.stopped:
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.monitor_ is None or self.result_ is not None or self.monitor_.stopped:
            return  # an evaluation outside training (trainer.evaluate() after it)
        values = {"val_" + k[len("eval_"):]: float(v) for k, v in (metrics or {}).items()
                  if k.startswith("eval_") and k[len("eval_"):] not in _NOT_RESULTS and isinstance(v, (int, float))}
        if self.monitor not in values:
            raise ConvergeError(f"ConvergeCallback monitors {self.monitor!r} (the Trainer's eval_"
                                f"{self.monitor[len('val_'):]}), which the evaluation does not report (it reports "
                                f"{sorted(values) or 'nothing'}): pass monitor=, or compute_metrics to the Trainer")
        if self._loss_count:
            values = {"train_loss": float(self._loss_sum) / self._loss_count, **values}  # sync point: per evaluation
        self._loss_sum, self._loss_count = None, 0
        if self.monitor_.step(values[self.monitor], values=values):
            control.should_training_stop = True

    # --- the end ----------------------------------------------------------------------------------
    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor_ is None or self.result_ is not None:
            return
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        limit = f"reached num_train_epochs {args.num_train_epochs:g} before converging" if args.max_steps <= 0 \
            else f"reached max_steps {args.max_steps} before converging"
        self.result_ = self.monitor_.finish(reason=limit, max_epochs=len(self.monitor_.history),
                                            restore_best=self.restore_best)


__all__ = ["ConvergeCallback"]
